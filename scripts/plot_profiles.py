# Profile figures of `kldq report` (see scripts/plot_results.py): per-unit KL sensitivity bars
# (sensitivity_*) and proxy-versus-KL scatters (proxy_vs_kl_*) from a `kldq profile` JSON.
import plot_lib as L
from plot_lib import num, plt, text

PROXIES = ["weight_mse", "weight_sqnr_db", "output_rel_error", "fisher"]
PROXY_LABELS = {"weight_mse": "weight MSE", "weight_sqnr_db": "weight SQNR (dB)",
                "output_rel_error": "output relative error", "fisher": "Fisher-weighted error"}


def _units(profile):
    units = profile.get("units")
    return [u for u in units if isinstance(u, dict)] if isinstance(units, list) else []


def _describe(profile):
    return (f"{text(profile.get('base'))} ({text(profile.get('method'))}), "
            f"{text(profile.get('granularity'))} units, {text(profile.get('mode'))}")


def _calib_note(profile):
    parts = []
    base_kl = num(profile.get("baseline_kl"))
    if base_kl is not None:
        se = num(profile.get("baseline_kl_stderr"))
        parts.append(f"KL with every unit in {text(profile.get('base'))}: {base_kl:.4g}"
                     + (f" ± {se:.2g}" if se is not None else ""))
    calib = profile.get("calibration") if isinstance(profile.get("calibration"), dict) else {}
    if num(calib.get("samples")) is not None and num(calib.get("seq_len")) is not None:
        parts.append(f"calibration {int(calib['samples'])} x {int(calib['seq_len'])} tokens")
    return "; ".join(parts)


def sensitivity(profile, model_name, stem, outdir, written):
    restore = profile.get("mode") == "restore-one"
    # Restore-one measures the KL removed by restoring one unit; kl_stderr there is the
    # restored model's KL spread, not the gain's, so it is not drawn as the gain's error.
    key, err_key = ("kl_gain", "kl_gain_stderr") if restore else ("kl_mean", "kl_stderr")
    rows = []
    for u in _units(profile):
        val = num(u.get(key))
        if val is None:
            continue
        block, proj = L.parse_unit(u.get("id"))
        rows.append((block, proj, val, L.spread(u.get(err_key))))
    if not rows:
        L.note(f"no per-unit {key} in the profile: skipping {stem}")
        return
    blocks = sorted({r[0] for r in rows if r[0] is not None})
    pos = {b: i for i, b in enumerate(blocks)}
    other = len(blocks)  # units outside the decoder blocks, if any, share one last group
    projs = L.proj_order({r[1] for r in rows})
    extra = [p for p in projs if p not in L.PROJ_COLORS]
    width = 0.8 / len(projs)
    use_log = L.log_worthy([r[2] for r in rows])
    ngroups = len(blocks) + (1 if any(r[0] is None for r in rows) else 0)
    fig, ax = plt.subplots(figsize=(max(7.0, min(16.0, 1.5 + ngroups * (0.1 * len(projs) + 0.2))),
                                    5.0), layout="constrained")
    for j, proj in enumerate(projs):
        sel = [r for r in rows if r[1] == proj]
        xs = [(pos[r[0]] if r[0] is not None else other) + (j - (len(projs) - 1) / 2) * width
              for r in sel]
        ys = [r[2] for r in sel]
        errs = None
        if any(r[3] is not None for r in sel):
            hi = [r[3] or 0.0 for r in sel]
            # On a log axis a lower whisker reaching 0 cannot be drawn; stop it just above.
            lo = [min(e, 0.9 * y) if use_log else e for e, y in zip(hi, ys)]
            errs = [lo, hi]
        ax.bar(xs, ys, width=width, color=L.proj_color(proj, extra), label=proj,
               yerr=errs, error_kw={"elinewidth": 0.7, "capsize": 0 if len(rows) > 80 else 1.5,
                                    "ecolor": "#333333"})
    labels = [str(b) for b in blocks] + (["other"] if ngroups > len(blocks) else [])
    step = max(1, ngroups // 32)
    ax.set_xticks(range(0, ngroups, step))
    ax.set_xticklabels(labels[::step])
    ax.set_xlim(-0.6, ngroups - 0.4)
    ax.set_xlabel("decoder block")
    if use_log:
        L.set_log(ax, "y", [r[2] for r in rows])
    if restore:
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("KL reduction when only this unit is bf16")
    else:
        ax.set_ylabel("KL vs bf16 when only this unit is quantized")
    ax.grid(axis="x", visible=False)
    fig.suptitle(f"Per-unit sensitivity — {model_name}\n{_describe(profile)}\n"
                 f"{_calib_note(profile)}".rstrip())
    fig.legend(title="unit", loc="outside right upper")  # beside the bars, never over them
    L.save(fig, outdir, stem, written)


def _rho_table(profile):
    for block in (profile.get("proxies"), profile):
        if not isinstance(block, dict):
            continue
        table = block.get("spearman") if block is profile.get("proxies") else block.get(
            "proxy_spearman")
        if isinstance(table, dict):
            return table
    return {}


def proxy_vs_kl(profile, model_name, stem, outdir, written):
    units = _units(profile)
    proxies_info = profile.get("proxies") if isinstance(profile.get("proxies"), dict) else {}
    against = proxies_info.get("against")
    if not isinstance(against, str):
        against = "kl_gain" if profile.get("mode") == "restore-one" else "kl_mean"
    rho_table = _rho_table(profile)
    names = [p for p in PROXIES if any(num(u.get(p)) is not None for u in units)]
    names += sorted(k for k in rho_table if k not in names and
                    any(num(u.get(k)) is not None for u in units))
    if not names:
        L.note(f"profile has no proxy columns: skipping {stem}")
        return
    ncols = 2 if len(names) == 4 else min(len(names), 3)
    nrows = (len(names) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.9 * nrows), squeeze=False,
                             layout="constrained")
    all_projs = L.proj_order({L.parse_unit(u.get("id"))[1] for u in units})
    extra = [p for p in all_projs if p not in L.PROJ_COLORS]
    drawn = set()
    for idx, name in enumerate(names):
        ax = axes[idx // ncols][idx % ncols]
        pts = [(num(u.get(name)), num(u.get(against)), L.parse_unit(u.get("id"))[1]) for u in units]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        for proj in all_projs:
            sel = [p for p in pts if p[2] == proj]
            if sel:
                ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=18, alpha=0.85,
                           color=L.proj_color(proj, extra), edgecolors="none",
                           label=proj if proj not in drawn else None)
                drawn.add(proj)
        # Decibels are already logarithmic; every other positive quantity is shown log-log.
        if pts and not name.endswith("_db") and min(p[0] for p in pts) > 0:
            L.set_log(ax, "x", [p[0] for p in pts])
        if pts and min(p[1] for p in pts) > 0:
            L.set_log(ax, "y", [p[1] for p in pts])
        rho = num(rho_table.get(name))
        if rho is None and isinstance(rho_table.get(name), dict):
            rho = num(rho_table[name].get("rho"))
        if rho is None:
            rho = L.spearman([p[0] for p in pts], [p[1] for p in pts])
        rho_s = f"ρ = {rho:+.3f}" if rho is not None else "ρ n/a"
        ax.set_title(f"{PROXY_LABELS.get(name, name)}\nSpearman {rho_s}, n = {len(pts)}")
        ax.set_xlabel(PROXY_LABELS.get(name, name))
        ax.set_ylabel(against)
    for idx in range(len(names), nrows * ncols):
        axes[idx // ncols][idx % ncols].set_visible(False)
    fig.suptitle(f"Proxies vs {against} — {model_name}\n{_describe(profile)}")
    handles, labels = [], []
    for ax in axes.flat:
        h, lab = ax.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        fig.legend(handles, labels, title="unit", loc="outside lower center",
                   ncol=min(len(handles), 9))
    L.save(fig, outdir, stem, written)
