"""Plots bench/run's soak: report_queue's dead tuples and size over time, the p95
submit -> start per window, and when the long reads ran.

Usage: soak-plot.py SOAK_JSON OUT_PNG (bench/soak.sh runs it in a venv with matplotlib).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display on a build machine
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src, encoding="utf-8") as f:
        soak = json.load(f)
    t0 = soak["t0"]
    samples = [s for s in soak["samples"] if s.get("t") is not None]
    minutes = [(s["t"] - t0) / 60 for s in samples]

    fig, (ax_dead, ax_size, ax_p95) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ax_dead.plot(minutes, [s["n_dead_tup"] for s in samples], label="dead tuples")
    ax_dead.plot(minutes, [s["n_live_tup"] for s in samples], label="live tuples")
    for s in samples:
        if s.get("last_autovacuum") and s["last_autovacuum"] >= t0:
            ax_dead.axvline((s["last_autovacuum"] - t0) / 60, color="green", alpha=0.15)
    ax_dead.set_ylabel("report_queue rows")
    ax_dead.legend(loc="upper left")
    ax_dead.set_title(
        f"soak: {soak['rate']} jobs/s, {soak['job_ms']} ms jobs, "
        f"{soak['seconds'] // 60} min (green: autovacuum, grey: long reads)"
    )

    ax_size.plot(minutes, [s["total_bytes"] / 1048576 for s in samples], color="tab:red")
    ax_size.set_ylabel("pg_total_relation_size (MiB)")

    window_min = soak["window_s"] / 60
    windows = soak["windows"]
    # Steps drawn "post" end at their last x: repeat the last window at its end.
    edges = [w["window_index"] * window_min for w in windows]
    edges += [edges[-1] + window_min] if edges else []
    for key in ("p95_ms", "p50_ms"):
        values = [w[key] for w in windows]
        ax_p95.step(edges, values + values[-1:], where="post", label=key[:3])
    ax_p95.set_ylabel("submit -> start (ms)")
    ax_p95.set_xlabel("minutes since the load started")
    ax_p95.legend(loc="upper left")

    reads = soak["reads"]
    for start in reads["starts"]:
        for ax in (ax_dead, ax_size, ax_p95):
            ax.axvspan((start - t0) / 60, (start - t0 + reads["seconds"]) / 60, color="grey", alpha=0.15)

    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: soak-plot.py SOAK_JSON OUT_PNG")
    main(sys.argv[1], sys.argv[2])
