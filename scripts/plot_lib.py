# Shared helpers of scripts/plot_results.py (the plots of `kldq report`): tolerant value access,
# run series and their styles, unit-id parsing, axis choices, and deterministic figure output.
# Everything here takes plain dicts (runs.jsonl records, profile.json) and never assumes a key.
import math
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # non-interactive: report runs headless (CI, SLURM nodes)
import matplotlib.pyplot as plt  # noqa: E402

GIB = float(1 << 30)
# Same names in Qwen2, Llama and Mistral checkpoints; half-block units end in self_attn / mlp.
PROJ_ORDER = ["q", "k", "v", "o", "gate", "up", "down", "attn", "mlp", "block"]
PROJ_COLORS = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "o": "#d62728",
               "gate": "#9467bd", "up": "#8c564b", "down": "#e377c2",
               "attn": "#1f77b4", "mlp": "#ff7f0e", "block": "#7f7f7f"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f"]
LINESTYLES = ["-", "--", ":", "-."]
PLANNER_MARKERS = {"restore-top": "o", "budget": "s", "random": "^", "uniform": "D"}
# The dimensions a series of runs is split by; labels name only those that vary.
SERIES_FIELDS = ("base", "method", "granularity", "mode", "planner", "by")


def setup_style():
    plt.rcParams.update({
        "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8,
        "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 120, "savefig.dpi": 120,
        # Fixed salt: SVG element ids are otherwise random, so reruns would differ.
        "svg.hashsalt": "kldq-report", "svg.fonttype": "path",
        "path.simplify": True,
    })


def num(value):
    """A finite float, or None for absent, non-numeric, boolean or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def spread(value):
    """An error-bar half-width: a finite non-negative number, or None."""
    v = num(value)
    return v if v is not None and v >= 0 else None


def text(value, default="?"):
    return str(value) if isinstance(value, (str, int, float)) and value != "" else default


def slug(*parts):
    """A stable, filesystem-safe file stem from name parts."""
    s = "_".join(text(p) for p in parts if p is not None)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", s).strip("_") or "unnamed"


def weight_bytes(rec):
    b = num(rec.get("weight_bytes"))
    if b is None and num(rec.get("weight_gib")) is not None:
        b = num(rec.get("weight_gib")) * GIB
    return b


def memory_unit(byte_values):
    """GiB for real models; MiB for tiny test models, whose GiB ticks would be unreadable."""
    vals = [b for b in byte_values if b is not None]
    if vals and max(vals) < 0.5 * GIB:
        return "MiB", float(1 << 20)
    return "GiB", GIB


def parse_unit(unit_id):
    """(block index or None, projection short name) of an HF layer / half-block / block id."""
    uid = text(unit_id, "")
    m = re.search(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)(?:\.(.*))?$", uid)
    if not m:
        return None, uid.rsplit(".", 1)[-1] or "?"
    rest = m.group(2) or ""
    if not rest:
        return int(m.group(1)), "block"
    last = rest.split(".")[-1]
    if last in ("self_attn", "attn", "attention"):
        return int(m.group(1)), "attn"
    if last in ("mlp", "feed_forward"):
        return int(m.group(1)), "mlp"
    return int(m.group(1)), re.sub(r"_proj$", "", last)


def proj_order(names):
    known = [p for p in PROJ_ORDER if p in names]
    return known + sorted(n for n in names if n not in PROJ_ORDER)


def proj_color(name, extra):
    if name in PROJ_COLORS:
        return PROJ_COLORS[name]
    return PALETTE[extra.index(name) % len(PALETTE)] if name in extra else "#7f7f7f"


def series_key(run):
    """The series a run belongs to; uniform runs use no profile, so only base/method matter."""
    vals = {f: run.get(f) if isinstance(run.get(f), str) else None for f in SERIES_FIELDS}
    if vals["planner"] == "uniform":
        vals.update(granularity=None, mode=None, by=None)
    return tuple(vals[f] for f in SERIES_FIELDS)


def varying_fields(keys):
    return {f for i, f in enumerate(SERIES_FIELDS) if len({k[i] for k in keys if k[i]}) > 1}


def series_label(key, varying):
    parts = []
    for i, f in enumerate(SERIES_FIELDS):
        v = key[i]
        if v and (f in ("base", "planner") or f in varying):
            parts.append(f"by {v}" if f == "by" else v)
    return " ".join(parts) or "runs"


def order_value(run):
    """Position of a run along its series: restore percent, budget bpw, 0 for uniform."""
    planner = run.get("planner")
    if planner == "budget":
        return num(run.get("budget_bpw")) or 0.0
    return num(run.get("percent")) or 0.0


def point_tag(run):
    planner = run.get("planner")
    if planner == "budget" and num(run.get("budget_bpw")) is not None:
        return f"{num(run['budget_bpw']):g}bpw"
    if planner in ("restore-top", "random") and num(run.get("percent")) is not None:
        return f"{num(run['percent']):g}%"
    return ""


class SeriesStyles:
    """Colour by (base, method), line style by (granularity, by), marker by planner, open
    markers for restore-one profiles: the uniform baseline of a base shares its curves' colour."""

    def __init__(self, keys):
        self.colors, self.lines = {}, {}
        for k in sorted(keys, key=lambda k: tuple(x or "" for x in k)):
            self.colors.setdefault((k[0], k[1]), PALETTE[len(self.colors) % len(PALETTE)])
        grans = ["linear", "half-block", "block"]  # finest first: solid lines for linear units
        lines = {(k[2], k[5]) for k in keys if k[4] not in ("uniform", "budget")}
        for g in sorted(lines, key=lambda g: (grans.index(g[0]) if g[0] in grans else 9,
                                             tuple(x or "" for x in g))):
            self.lines[g] = LINESTYLES[len(self.lines) % len(LINESTYLES)]
        for k in sorted(keys, key=lambda k: tuple(x or "" for x in k)):
            # Budget plans use no `by`: they take the style of their granularity's first line.
            if k[4] == "budget" and (k[2], k[5]) not in self.lines:
                same = [v for (g, _), v in self.lines.items() if g == k[2]]
                self.lines[(k[2], k[5])] = same[0] if same else LINESTYLES[
                    len(self.lines) % len(LINESTYLES)]

    def __call__(self, key):
        return dict(color=self.colors.get((key[0], key[1]), "#7f7f7f"),
                    linestyle=self.lines.get((key[2], key[5]), "-"),
                    marker=PLANNER_MARKERS.get(key[4], "o"),
                    fillstyle="none" if key[3] == "restore-one" else "full")


def log_worthy(values, min_span=10.0):
    """Log scale when every value is positive and max/min reaches min_span (a decade)."""
    vals = [v for v in values if v is not None]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= min_span


def _sci_label(value, _pos):
    if value <= 0:
        return ""
    exp = math.floor(math.log10(value) + 1e-9)
    mant = round(value / 10 ** exp)
    return f"$10^{{{exp}}}$" if mant == 1 else f"${mant}\\times10^{{{exp}}}$"


def set_log(ax, axis, values):
    """Log scale on ax's x or y axis with legible ticks: over less than a decade matplotlib's
    own minor labels; up to a few decades majors at 1, 2, 5 x 10^k; beyond, decades only.
    (Its default labels every minor tick over 1-2 decades, and they collide.)"""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    getattr(ax, f"set_{axis}scale")("log")
    vals = [v for v in values if v is not None and v > 0]
    span = math.log10(max(vals) / min(vals)) if vals else 0.0
    if span < 0.8:
        return
    ax_ = getattr(ax, f"{axis}axis")
    if span < 2.5:
        ax_.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
        ax_.set_major_formatter(FuncFormatter(_sci_label))
    ax_.set_minor_formatter(NullFormatter())


def zero_log_scale(ax, values):
    """Losses (KL, flip rate) of fp8 and nf4 differ by decades while bf16 sits at exactly 0:
    a symlog y axis, linear below the smallest measured decade, shows both. Linear otherwise."""
    pos = [v for v in values if v is not None and v > 0]
    if log_worthy(pos, 100.0):
        ax.set_yscale("symlog", linthresh=10 ** math.floor(math.log10(min(pos))))
        ax.set_ylim(bottom=0)


def spearman(xs, ys):
    """Spearman rank correlation with average ranks for ties (no scipy dependency)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx > 0 and vy > 0 else None


def save(fig, outdir, stem, written):
    """PNG + SVG with fixed metadata (no date, no version string) so reruns are identical."""
    os.makedirs(outdir, exist_ok=True)
    for ext, meta in (("png", {"Software": None}),
                      ("svg", {"Date": None, "Creator": "kldq report", "Title": stem})):
        path = os.path.join(outdir, f"{stem}.{ext}")
        # Figures use the constrained layout, so no bbox_inches="tight" (a second full draw).
        fig.savefig(path, format=ext, metadata=meta)
        written.append(path)
    plt.close(fig)


def note(msg):
    print(f"plot_results: {msg}", file=sys.stderr)
