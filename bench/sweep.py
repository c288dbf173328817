"""`clockwork-bench sweep`: simulated schedulers across offered loads, as one plot.

A table of runs says less at a glance than goodput, SLO misses and tail latency drawn against
the offered rate, one line per scheduler. This command runs the simulator (bench/sim/) for
every scheduler at every rate on the same workload options, or reads the `*-summary.json`
files earlier `clockwork-bench sim` runs wrote (`--from`), and writes:

- `sweep.json`: one row per run (scheduler, offered/s, goodput/s, refused at once, admitted in
  SLO, p99 of OK replies);
- `sweep.png`: goodput, the share of admitted requests that missed the SLO (log scale, so 99%
  and 99.99% look as different as they are), and p99 latency, each against offered load.

    clockwork-bench sweep --rates 2000,4000,6000,8000,11000,16000 --schedulers clockwork,fifo \\
        --gpus 16 --models 4000 --gpu-memory-gb 16 --duration-s 40 --measure-from-s 10 --no-logs
    clockwork-bench sweep --from out/cw8000 out/fifo8000 ...   # plot runs already made

Every option `clockwork-bench sim` takes (but --scheduler, --rate and --compare) applies.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from clockwork.bench import sim
from clockwork.bench.progress import NullProgress, Progress
from clockwork.bench.report import format_table, saved_figure, write_json

MISS_FLOOR = 1e-6  # a run with no miss is drawn here on the log axis (and labelled as such)


def row_of(summary: Mapping) -> dict:
    """Pure: the figures a sweep plots, from one simulator summary."""
    offered = summary["offered"] or 1
    return {
        "scheduler": summary["scheduler"],
        "offered_per_s": summary["offered_per_s"],
        "goodput_per_s": summary["goodput_per_s"],
        "refused_share": summary["rejected"] / offered,
        "admitted_in_slo": summary["slo_attainment_admitted"],
        "p99_ok_ms": summary["latency_ok_ms"]["p99"],
    }


def read_summaries(folders: Iterable[str | Path]) -> list[dict]:
    """Every `*-summary.json` in the folders (as `clockwork-bench sim --out` writes them)."""
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).glob("*-summary.json")):
            rows.append(row_of(json.loads(path.read_text())))
    return rows


def run_sweep(args: argparse.Namespace, sim_args: argparse.Namespace) -> list[dict]:
    """One simulator run per scheduler and rate, each summary also written under --out."""
    base = sim.spec_from_args(sim_args)
    rows = []
    for name in args.schedulers:
        for rate in args.rates:
            spec = replace(base, scheduler=name, rate_per_s=rate)
            progress = NullProgress() if sim_args.quiet else \
                Progress(spec.duration_s + spec.prewarm_s, label=f"{name} {rate:g}/s")
            with progress:
                summary = sim.run(spec, progress=progress)
            sim.write_summary(Path(args.out) / "runs", summary, f"{name}-{rate:g}")
            rows.append(row_of(summary))
    return rows


def write_png(path: Path, rows: Sequence[Mapping], title: str) -> Path:
    with saved_figure(path, 1, 3, figsize=(15, 4.5), dpi=100) as (fig, (ax1, ax2, ax3)):
        for name in dict.fromkeys(r["scheduler"] for r in rows):
            mine = sorted((r for r in rows if r["scheduler"] == name), key=lambda r: r["offered_per_s"])
            x = [r["offered_per_s"] for r in mine]
            ax1.plot(x, [r["goodput_per_s"] for r in mine], marker="o", label=name)
            ax2.plot(x, [max(MISS_FLOOR, 1 - r["admitted_in_slo"]) for r in mine], marker="o", label=name)
            ax3.plot(x, [r["p99_ok_ms"] for r in mine], marker="o", label=name)
        top = max((r["offered_per_s"] for r in rows), default=1)
        ax1.plot([0, top], [0, top], linestyle=":", color="grey", linewidth=1, label="offered")
        ax1.set_title("goodput (OK within the SLO)")
        ax1.set_ylabel("requests/s")
        ax2.set_yscale("log")
        ax2.axhline(1e-4, linestyle="--", color="grey", linewidth=1, label="99.99% in SLO")
        ax2.set_title(f"admitted requests missing the SLO ({MISS_FLOOR:g}: none)")
        ax2.set_ylabel("share of admitted")
        ax3.set_yscale("log")
        ax3.set_title("p99 latency of OK replies")
        ax3.set_ylabel("ms")
        for ax in (ax1, ax2, ax3):
            ax.set_xlabel("offered, requests/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title)
    return path


def format_rows(rows: Sequence[Mapping]) -> str:
    ordered = sorted(rows, key=lambda r: (r["scheduler"], r["offered_per_s"]))
    return format_table([(r["scheduler"], f"{r['offered_per_s']:.0f}", f"{r['goodput_per_s']:.0f}",
                          f"{100 * r['refused_share']:.2f}%", f"{100 * r['admitted_in_slo']:.4f}%",
                          f"{r['p99_ok_ms']:.1f}") for r in ordered],
                        header=("scheduler", "offered/s", "goodput/s", "refused", "admitted in SLO", "p99 OK ms"))


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, argparse.Namespace]:
    # No abbreviations: `--rate` must reach the simulator's parser (and be refused), not
    # pass for `--rates`.
    p = argparse.ArgumentParser(prog="clockwork-bench sweep", description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=lambda text: [float(v) for v in text.split(",")],
                   help="offered requests/s to run, comma-separated")
    p.add_argument("--schedulers", type=lambda text: text.split(","), default=["clockwork", "fifo"],
                   help=f"comma-separated, of {', '.join(sim.SCHEDULERS)}")
    p.add_argument("--from", dest="folders", nargs="+", default=[],
                   help="plot the summaries in these folders instead of running anything")
    p.add_argument("--title", default="", help="the plot's title (default: the workload)")
    p.add_argument("--out", default="out/sweep")
    args, rest = p.parse_known_args(argv)
    if not args.folders and not args.rates:
        p.error("give --rates to run, or --from folders to plot")
    unknown = sorted(set(args.schedulers) - set(sim.SCHEDULERS))
    if unknown:
        p.error(f"unknown scheduler(s): {', '.join(unknown)}")
    sim_args = sim.parse_args(rest)
    if sim_args.compare or sim_args.rate:
        p.error("--rate and --compare belong to `clockwork-bench sim`; use --rates and --schedulers")
    return args, sim_args


def main(argv: Sequence[str] | None = None) -> int:
    args, sim_args = parse_args(argv)
    rows = read_summaries(args.folders) if args.folders else run_sweep(args, sim_args)
    if not rows:
        print("no summaries found", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = args.title or (f"{sim_args.workload}, {sim_args.models} models, SLO {sim_args.slo_ms:g} ms"
                           if not args.folders else "simulated runs")
    print(format_rows(rows))
    write_json(out / "sweep.json", {"rows": rows})
    write_png(out / "sweep.png", rows, title)
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
