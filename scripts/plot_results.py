#!/usr/bin/env python3
# The plotting half of `kldq report`: reads a results directory written by `kldq run`
# (manifest.json, runs*.jsonl, the stage artifacts they point to) and writes PNG + SVG figures:
#   sensitivity_<model>_<base>_<method>_<granularity>_<mode>   per-unit KL of each profile
#   proxy_vs_kl_<model>_<base>_<method>_<granularity>_<mode>   cheap proxies vs measured KL
#   frontier_<model>            flip rate and KL against weight memory, bf16 reference as a star
#   metrics_vs_memory_<model>   perplexity, accuracies and decode speed against weight memory
#   methods_<model>             rtn/hqq/gptq/awq side by side (only with more than one method)
#   method_frontier_<model>     KL vs bits per weight, one frontier per method (several methods)
#   scaling                     KL and flip rate against model size (only with several models)
# Usage: plot_results.py RESULTS_DIR [-o OUTDIR]; prints each written file, one per line.
# Exit: 0 ok (plots lacking data are skipped with a note on stderr), 1 not a results directory,
# unreadable manifest, matplotlib missing or a plot failed, 2 bad arguments.
# Figure code: plot_lib.py (helpers), plot_profiles.py, plot_runs.py beside this file.
import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    print(f"plot_results: error: {msg}", file=sys.stderr)
    sys.exit(1)


def warn(msg):
    print(f"plot_results: warning: {msg}", file=sys.stderr)


def import_plotting():
    """The figure modules, re-running under the project's .venv when the interpreter that
    `kldq report` found (plain python3) has no matplotlib but scripts/setup.sh's venv does."""
    sys.path.insert(0, HERE)
    sys.dont_write_bytecode = True  # no __pycache__ beside the scripts (may be read-only)
    try:
        import plot_lib, plot_profiles, plot_runs  # noqa: E401
        return plot_lib, plot_profiles, plot_runs
    except ImportError as e:
        venv = os.path.join(os.path.dirname(HERE), ".venv")
        py = os.path.join(venv, "bin", "python3")
        if (os.access(py, os.X_OK) and os.path.realpath(sys.prefix) != os.path.realpath(venv)
                and not os.environ.get("KLDQ_PLOT_REEXEC")):
            os.environ["KLDQ_PLOT_REEXEC"] = "1"
            os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])
        fail(f"cannot import matplotlib ({e}); install it with "
             f"'pip install -r scripts/requirements.txt' (or just matplotlib) to get plots")


def load_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        warn(f"cannot read {what} {path}: {e}")
        return None
    if not isinstance(data, dict):
        warn(f"{what} {path} is not a JSON object")
        return None
    return data


def run_files(results):
    # runs.jsonl first, then the shards in name order: "keep the last" then favours shards
    # consistently, whatever order the filesystem lists them in.
    files = sorted(glob.glob(os.path.join(results, "runs*.jsonl")))
    return sorted(files, key=lambda f: os.path.basename(f) != "runs.jsonl")


def load_runs(files):
    """Every record of every runs*.jsonl, deduplicated by (model, point), the last one kept."""
    by_key = {}
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as e:
            warn(f"cannot read {path}: {e}")
            continue
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                # A run killed mid-write leaves a truncated last line; the rest is still good.
                warn(f"{path}:{n}: not a JSON record (interrupted write?): skipped")
                continue
            if not isinstance(rec, dict):
                warn(f"{path}:{n}: not a JSON object: skipped")
                continue
            point = rec.get("point")
            ok = isinstance(point, int) and not isinstance(point, bool)
            key = (model_key(rec), point if ok else (path, n))
            by_key.pop(key, None)  # re-insert so the dict order follows the kept record
            by_key[key] = rec
    return list(by_key.values())


def model_key(rec):
    """The run's model identity: fingerprint, else path, else name (as text, whatever JSON)."""
    for k in ("model_id", "model", "model_name"):
        v = rec.get(k)
        if isinstance(v, (str, int)) and not isinstance(v, bool) and v != "":
            return str(v)
    return "?"


def resolve(results, rel):
    if not isinstance(rel, str) or not rel:
        return None
    return rel if os.path.isabs(rel) else os.path.join(results, rel)


def build_models(results, manifest, runs, L):
    """The manifest's models in order (then any model only the runs name), each with its
    reference metrics and runs, and a unique file-name stem."""
    models, by_id = [], {}
    entries = manifest.get("models") if isinstance(manifest.get("models"), list) else []
    for e in [e for e in entries if isinstance(e, dict)]:
        path = e.get("path") if isinstance(e.get("path"), str) else ""
        name = L.text(e.get("name"), os.path.basename(path.rstrip("/")) or "model")
        ref = {}
        if resolve(results, e.get("reference")):
            ref = load_json(resolve(results, e["reference"]), "reference metrics") or {}
        m = {"id": L.text(e.get("id"), path or name), "path": path, "name": name,
             "params": e.get("params"), "ref": ref, "runs": []}
        models.append(m)
        for k in (m["id"], path):
            if k:
                by_id.setdefault(k, m)
    for r in runs:
        mid = model_key(r)
        m = by_id.get(mid) or (by_id.get(r["model"]) if isinstance(r.get("model"), str) else None)
        if m is None:
            path = r.get("model") if isinstance(r.get("model"), str) else ""
            name = L.text(r.get("model_name"), os.path.basename(path.rstrip("/")) or "model")
            m = {"id": str(mid), "path": path, "name": name, "params": None, "ref": {},
                 "runs": []}
            models.append(m)
            by_id[str(mid)] = m
        m["runs"].append(r)
    stems = [L.slug(m["name"]) for m in models]
    for m, stem in zip(models, stems):
        # Two checkpoints with one basename (a/model, b/model): the fingerprint tells them apart.
        m["stem"] = stem if stems.count(stem) == 1 else L.slug(m["name"], m["id"][:8])
    return models


def profile_jobs(results, models, L):
    """(profile, model name, file-name stem tail) of every profile file a run references."""
    jobs, seen, stems = [], set(), {}
    for m in models:
        lists = [r["profile_files"] for r in m["runs"] if isinstance(r.get("profile_files"), list)]
        files = sorted({f for fs in lists for f in fs if isinstance(f, str) and f})
        for rel in files:
            path = resolve(results, rel)
            if os.path.normpath(path) in seen:
                continue
            seen.add(os.path.normpath(path))
            prof = load_json(path, "profile")
            if prof is None:
                continue
            tail = L.slug(m["stem"], prof.get("base"), prof.get("method"),
                          prof.get("granularity"), prof.get("mode"))
            stems.setdefault(tail, []).append(len(jobs))
            jobs.append([prof, m["name"], tail, path])
    for tail, idxs in stems.items():
        if len(idxs) > 1:  # same settings, other calibration: the stage key tells them apart
            for i in idxs:
                key = os.path.basename(os.path.dirname(jobs[i][3])).replace("profile-", "")
                jobs[i][2] = L.slug(tail, key[:8] or str(i))
    return sorted(((p, name, tail) for p, name, tail, _ in jobs), key=lambda j: j[2])


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="plot_results.py", description="Figures of a kldq results directory (kldq report).")
    ap.add_argument("results", metavar="RESULTS_DIR", help="directory written by `kldq run`")
    ap.add_argument("-o", "--output", metavar="OUTDIR",
                    help="where to write the figures (default: RESULTS_DIR/report)")
    args = ap.parse_args(argv)  # exits 2 on bad arguments
    results = args.results
    if not os.path.isdir(results):
        fail(f"{results}: no such directory")
    manifest_path = os.path.join(results, "manifest.json")
    files = run_files(results)
    if not os.path.isfile(manifest_path) or not files:
        missing = [n for n, ok in (("manifest.json", os.path.isfile(manifest_path)),
                                   ("runs*.jsonl", bool(files))) if not ok]
        fail(f"{results} is not a kldq results directory (no {' or '.join(missing)}; "
             f"`kldq run` writes them)")
    # Before anything prints a warning: the .venv re-run would print it twice.
    L, P, R = import_plotting()
    manifest = load_json(manifest_path, "manifest")
    if manifest is None:
        fail(f"{manifest_path} is unreadable")
    runs = load_runs(files)
    if not runs:
        fail(f"no run records in {', '.join(files)}")
    L.setup_style()
    outdir = args.output or os.path.join(results, "report")
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        fail(f"cannot create {outdir}: {e}")
    models = build_models(results, manifest, runs, L)
    jobs = []
    for prof, name, tail in profile_jobs(results, models, L):
        jobs.append((f"sensitivity_{tail}", P.sensitivity, (prof, name, f"sensitivity_{tail}")))
        jobs.append((f"proxy_vs_kl_{tail}", P.proxy_vs_kl, (prof, name, f"proxy_vs_kl_{tail}")))
    for m in [m for m in models if m["runs"]]:
        for fn in (R.frontier, R.metrics_vs_memory, R.methods, R.method_frontier):
            jobs.append((f"{fn.__name__}_{m['stem']}", fn, (m,)))
    jobs.append(("scaling", R.scaling, (models,)))
    written, failed = [], []
    for label, fn, fargs in jobs:
        before = len(written)
        try:
            fn(*fargs, outdir, written)
        except Exception as e:  # one broken figure must not cost the others
            failed.append(label)
            print(f"plot_results: error: {label}: {type(e).__name__}: {e}", file=sys.stderr)
            L.plt.close("all")
        for path in written[before:]:
            print(path, flush=True)
    if failed:
        print(f"plot_results: {len(failed)} plot(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if not written:
        warn("the runs hold no data to plot: no figure written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
