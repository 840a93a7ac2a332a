# Sweep figures of `kldq report` (see scripts/plot_results.py) from runs.jsonl records: the
# memory frontier (frontier_*), perplexity/MMLU/zero-shot tasks' mean/decode speed against
# memory (metrics_vs_memory_*), the method
# comparison (methods_*), KL against bits per weight with one frontier per method
# (method_frontier_*) and the model-size scaling (scaling).
# A model here is a dict: name, stem, params, ref (reference metrics dict), runs (records).
import plot_lib as L
from matplotlib.ticker import FuncFormatter, NullFormatter
from plot_lib import num, plt

METHOD_COLORS = {"rtn": "#1f77b4", "hqq": "#9467bd", "gptq": "#d62728", "awq": "#2ca02c"}
YLABELS = {"kl_mean": "KL vs bf16 (per token)", "flip_rate": "MMLU answer flip rate",
           "ppl": "perplexity", "mmlu_acc": "MMLU accuracy",
           "tasks_mean": "zero-shot tasks, mean accuracy",
           "decode_tps_b1": "decode tokens/s, batch 1", "decode_tps_b16": "decode tokens/s, batch 16"}


def _bases(runs):
    bases = sorted({r.get("base") for r in runs if isinstance(r.get("base"), str)})
    return ", ".join(bases) or "?"


def _draw_series(ax, runs, ykey, unit_div, styles, varying, err_key=None):
    """One line per series (points ordered by percent/budget, joined through per-position
    means so repeated random seeds do not zigzag); uniform runs as large baseline markers."""
    groups = {}
    for r in runs:
        x, y = L.weight_bytes(r), num(r.get(ykey))
        if x is not None and y is not None:
            groups.setdefault(L.series_key(r), []).append(r)
    for key in sorted(groups, key=lambda k: tuple(v or "" for v in k)):
        pts = sorted(groups[key], key=lambda r: (L.order_value(r), num(r.get("seed")) or 0))
        st = styles(key)
        xs = [L.weight_bytes(r) / unit_div for r in pts]
        ys = [num(r.get(ykey)) for r in pts]
        label = L.series_label(key, varying)
        if err_key and any(L.spread(r.get(err_key)) is not None for r in pts):
            ax.errorbar(xs, ys, yerr=[L.spread(r.get(err_key)) or 0.0 for r in pts], fmt="none",
                        ecolor=st["color"], elinewidth=0.7, alpha=0.6, zorder=2)
        if key[4] == "uniform":
            ax.scatter(xs, ys, s=90, marker=st["marker"], color=st["color"], edgecolors="black",
                       linewidths=0.8, zorder=4, label=label + " (baseline)")
            continue
        means = {}
        for r, x, y in zip(pts, xs, ys):
            means.setdefault(L.order_value(r), []).append((x, y))
        orders = sorted(means)
        line = [(sum(p[0] for p in means[o]) / len(means[o]),
                 sum(p[1] for p in means[o]) / len(means[o])) for o in orders]
        ax.plot([p[0] for p in line], [p[1] for p in line], color=st["color"],
                linestyle=st["linestyle"], linewidth=1.3, zorder=3)
        ax.plot(xs, ys, linestyle="none", marker=st["marker"], color=st["color"],
                fillstyle=st["fillstyle"], markersize=5, zorder=3)
        ax.plot([], [], color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                fillstyle=st["fillstyle"], markersize=5, label=label)  # legend entry only
        for o, (x, y) in zip(orders, line):
            tag = L.point_tag(next(r for r in pts if L.order_value(r) == o))
            if tag:
                ax.annotate(tag, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6.5,
                            color=st["color"])


def _memory_panels(model, panels, stem, title, outdir, written, reference):
    runs, wanted = model["runs"], " / ".join(p[0] for p in panels)
    panels = [p for p in panels
              if any(L.weight_bytes(r) is not None and num(r.get(p[0])) is not None for r in runs)]
    if not panels:
        L.note(f"no runs with weight memory and {wanted}: skipping {stem}")
        return
    ref_bytes = num(model["ref"].get("weight_bytes"))
    unit, div = L.memory_unit([L.weight_bytes(r) for r in runs] + [ref_bytes])
    keys = {L.series_key(r) for r in runs}
    styles, varying = L.SeriesStyles(keys), L.varying_fields(keys)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False,
                             layout="constrained")
    for ax, (ykey, err_key) in zip(axes[0], panels):
        _draw_series(ax, runs, ykey, div, styles, varying, err_key)
        reference(ax, ykey, ref_bytes, div)
        ys = [num(r.get(ykey)) for r in runs if num(r.get(ykey)) is not None]
        if ykey == "ppl" and L.log_worthy(ys):
            ax.set_yscale("log")
        elif ykey in ("kl_mean", "flip_rate"):
            L.zero_log_scale(ax, ys)
        ax.set_xlabel(f"weight memory ({unit})")
        ax.set_ylabel(YLABELS.get(ykey, ykey))
        ax.set_title(f"{YLABELS.get(ykey, ykey)} vs weight memory")
    shown = [r for r in runs if L.weight_bytes(r) is not None
             and any(num(r.get(p[0])) is not None for p in panels)]
    fig.suptitle(f"{title} — {model['name']} (base {_bases(shown)})")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
    L.save(fig, outdir, stem, written)


def frontier(model, outdir, written):
    def reference(ax, ykey, ref_bytes, div):
        if ref_bytes is not None:  # bf16 moves no distribution and flips no answer
            ax.scatter([ref_bytes / div], [0.0], marker="*", s=220, color="gold",
                       edgecolors="black", linewidths=0.8, zorder=5, label="bf16 reference",
                       clip_on=False)
    _memory_panels(model, [("flip_rate", None), ("kl_mean", "kl_stderr")],
                   f"frontier_{model['stem']}", "Quality loss vs memory", outdir, written,
                   reference)


def method_frontier(model, outdir, written):
    """KL against bits per weight, one colour per method: every point, and the method's Pareto
    frontier (the least KL reached at each size) as its curve."""
    stem = f"method_frontier_{model['stem']}"
    runs = [r for r in model["runs"] if isinstance(r.get("method"), str)
            and num(r.get("bits_per_weight")) is not None and num(r.get("kl_mean")) is not None]
    meths = sorted({r["method"] for r in runs},
                   key=lambda m: (list(METHOD_COLORS).index(m) if m in METHOD_COLORS else 9, m))
    if len(meths) < 2:
        L.note(f"runs use {len(meths)} method(s) with KL: skipping {stem}")
        return
    fig, ax = plt.subplots(figsize=(7.0, 4.8), layout="constrained")
    for m in meths:
        pts = sorted((num(r["bits_per_weight"]), num(r["kl_mean"])) for r in runs
                     if r["method"] == m)
        color = METHOD_COLORS.get(m)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.45, color=color)
        front, best = [], float("inf")
        for x, y in pts:  # increasing size: keep each point that lowers the best KL so far
            if y < best:
                front.append((x, y))
                best = y
        ax.plot([p[0] for p in front], [p[1] for p in front], marker="o", color=color, label=m)
    kls = [num(r["kl_mean"]) for r in runs]
    if min(kls) > 0:
        ax.set_yscale("log")  # KLs of 2 to 8 bits span orders of magnitude
    else:
        L.zero_log_scale(ax, kls)
    ax.set_xlabel("bits per weight (linear layers)")
    ax.set_ylabel(YLABELS["kl_mean"])
    ax.set_title(f"Methods: KL vs size (frontier per method) — {model['name']}")
    ax.legend()
    L.save(fig, outdir, stem, written)


def metrics_vs_memory(model, outdir, written):
    def reference(ax, ykey, ref_bytes, div):
        val = num(model["ref"].get(ykey))
        if val is None and ykey.startswith("decode_tps_"):  # the reference's metrics: "speed"
            speed = model["ref"].get("speed") or {}
            val = num((speed.get(ykey.removeprefix("decode_tps_")) or {}).get("decode_tokens_per_second"))
        if val is None:  # the runs carry the reference's value too
            val = next((num(r.get(ykey + "_ref")) for r in model["runs"]
                        if num(r.get(ykey + "_ref")) is not None), None)
        if val is not None:
            ax.axhline(val, color="black", linestyle="--", linewidth=1.0,
                       label="bf16 reference", zorder=1)
            ax.annotate(f"bf16 {val:.4g}", (0.005, val), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(2, 3), fontsize=7)
    # Panels without data (no MMLU, no zero-shot tasks, no speed) are left out by _memory_panels.
    _memory_panels(model, [("ppl", None), ("mmlu_acc", None), ("tasks_mean", None),
                           ("decode_tps_b1", None), ("decode_tps_b16", None)],
                   f"metrics_vs_memory_{model['stem']}", "Perplexity, accuracy and speed vs memory",
                   outdir, written, reference)


def _group_label(run, varying):
    key = L.series_key(run)
    parts = [key[i] for i, f in enumerate(L.SERIES_FIELDS)
             if key[i] and f not in ("method", "planner") and (f == "base" or f in varying)]
    planner = run.get("planner")
    if planner == "uniform":
        parts.append("uniform")
    elif planner == "budget":
        parts.append(f"{L.order_value(run):g} bpw")
    else:
        parts.append(("random " if planner == "random" else "") + f"{L.order_value(run):g}%")
    return "\n".join([" ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else parts[0]


def methods(model, outdir, written):
    runs, stem = model["runs"], f"methods_{model['stem']}"
    meths = sorted({r.get("method") for r in runs if isinstance(r.get("method"), str)},
                   key=lambda m: (list(METHOD_COLORS).index(m) if m in METHOD_COLORS else 9, m))
    if len(meths) < 2:
        L.note(f"runs use {len(meths)} quantization method(s): skipping {stem}")
        return
    cells = {}  # (series key less method, position) -> method -> runs
    for r in runs:
        if r.get("method") in meths:
            # HQQ's int4_g64_fz sits beside the other methods' int4_g64: the same grid and
            # group, with float zero points.
            k = L.series_key(r)
            k = (k[0].removesuffix("_fz") if k[0] else k[0],) + k[1:]
            gk = (tuple(v or "" for i, v in enumerate(k) if i != 1), L.order_value(r))
            cells.setdefault(gk, {}).setdefault(r["method"], []).append(r)
    # Only settings run with several methods compare methods; the rest is in frontier_*.
    cells = {g: c for g, c in cells.items() if len(c) > 1}
    kept = [r for c in cells.values() for rs in c.values() for r in rs]
    panels = [m for m in ("kl_mean", "flip_rate", "ppl")
              if any(num(r.get(m)) is not None for r in kept)]
    if not panels:
        L.note(f"no setting has KL, flip rate or perplexity for several methods: skipping {stem}")
        return
    varying = L.varying_fields({L.series_key(r) for r in kept})
    labels = {g: _group_label(next(iter(c.values()))[0], varying) for g, c in cells.items()}
    # Uniform first within a base, then increasing restore percent / budget.
    groups = sorted(cells, key=lambda g: (g[0][0], g[0][3] != "uniform", g[0], g[1]))
    width = 0.8 / len(meths)
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, layout="constrained",
                             figsize=(max(7.0, 1.0 + 0.35 * len(groups) * len(meths)),
                                      2.6 * len(panels) + 0.8))
    for ax, metric in zip(axes[:, 0], panels):
        for j, m in enumerate(meths):
            xs, ys = [], []
            for i, g in enumerate(groups):
                vals = [num(r.get(metric)) for r in cells[g].get(m, [])]
                vals = [v for v in vals if v is not None]
                if vals:
                    xs.append(i + (j - (len(meths) - 1) / 2) * width)
                    ys.append(sum(vals) / len(vals))
            ax.bar(xs, ys, width=width, label=m, color=METHOD_COLORS.get(m, L.PALETTE[j % 10]))
        ax.set_ylabel(YLABELS.get(metric, metric))
        ax.grid(axis="x", visible=False)
        vals = [num(r.get(metric)) for r in kept if num(r.get(metric)) is not None]
        if metric == "ppl" and vals:
            ref = num(model["ref"].get("ppl"))
            if ref is not None:
                line = ax.axhline(ref, color="black", linestyle="--", linewidth=1.0,
                                  label=f"bf16 reference ({ref:.4g})")
                ax.legend(handles=[line], loc="upper right", fontsize=7)
            # Perplexities differ by a few percent: bars from 0 would all look equal.
            ax.set_ylim(bottom=0.97 * min(vals + ([ref] if ref is not None else [])))
        elif L.log_worthy(vals, 100.0):
            L.set_log(ax, "y", vals)
    axes[-1, 0].set_xticks(range(len(groups)))
    axes[-1, 0].set_xticklabels([labels[g] for g in groups], fontsize=8)
    axes[0, 0].legend(title="method", ncol=len(meths), loc="upper right")
    fig.suptitle(f"Quantization methods — {model['name']} (base {_bases(kept)})")
    L.save(fig, outdir, stem, written)


def _size_label(value, _pos, bytes_=False):
    if bytes_:
        return f"{value / L.GIB:.3g} GiB"
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def scaling(models, outdir, written):
    models = [m for m in models if m["runs"]]
    if len(models) < 2:
        L.note("runs cover fewer than two models: skipping scaling")
        return
    use_bytes = not all(num(m.get("params")) is not None for m in models)
    if not use_bytes:
        size, xlabel = {id(m): num(m["params"]) for m in models}, "linear-layer parameters"
    else:  # the bf16 reference's weight bytes rank the models just as well
        size = {id(m): num(m["ref"].get("weight_bytes")) for m in models}
        xlabel = "bf16 weight memory"
        for m in [m for m in models if size[id(m)] is None]:
            L.note(f"scaling: no params or reference weight_bytes for {m['name']}: left out")
        models = [m for m in models if size[id(m)] is not None]
        if len(models) < 2:
            L.note("fewer than two models have a known size: skipping scaling")
            return
    models = sorted(models, key=lambda m: size[id(m)])
    # bf16 runs lose nothing at any size; uniform and restore-top are the comparable plans.
    pool = [r for m in models for r in m["runs"]
            if r.get("planner") in ("uniform", "restore-top") and r.get("base") != "bf16"]
    series = []  # (key, percent or None): uniform, and the largest percent every model has
    for key in sorted({L.series_key(r) for r in pool}, key=lambda k: tuple(v or "" for v in k)):
        per_model = [{num(r.get("percent")) for r in m["runs"] if L.series_key(r) == key}
                     for m in models]
        if key[4] == "uniform":
            if sum(1 for p in per_model if p) >= 2:
                series.append((key, None))
            continue
        common = set.intersection(*per_model) - {None}
        if common:
            series.append((key, max(common)))
    panels = [p for p in ("kl_mean", "flip_rate") if any(num(r.get(p)) is not None for r in pool)]
    if not series or not panels:
        L.note("no uniform or restore-top setting run on several models: skipping scaling")
        return
    keys = [k for k, _ in series]
    styles, varying = L.SeriesStyles(keys), L.varying_fields(keys)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False,
                             layout="constrained")
    for ax, metric in zip(axes[0], panels):
        all_ys = []
        for key, pct in series:
            st, xs, ys = styles(key), [], []
            for m in models:
                vals = [num(r.get(metric)) for r in m["runs"] if L.series_key(r) == key
                        and (pct is None or num(r.get("percent")) == pct)]
                vals = [v for v in vals if v is not None]
                if vals:
                    xs.append(size[id(m)])
                    ys.append(sum(vals) / len(vals))
            if xs:
                label = L.series_label(key, varying) + (f" {pct:g}%" if pct is not None else "")
                ax.plot(xs, ys, color=st["color"], linestyle=st["linestyle"],
                        marker=st["marker"], fillstyle=st["fillstyle"],
                        markersize=8 if pct is None else 5, label=label)
                all_ys += ys
        L.zero_log_scale(ax, all_ys)
        ax.set_xscale("log")
        ax.set_xticks([size[id(m)] for m in models], minor=False)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, p: _size_label(v, p, use_bytes)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(YLABELS[metric])
        ax.set_title(f"{YLABELS[metric]} vs model size")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)))
    names = ", ".join(m["name"] for m in models)
    fig.suptitle(f"Scaling — {names} (base {_bases(pool)})")
    L.save(fig, outdir, "scaling", written)
