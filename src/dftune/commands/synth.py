"""``dftune synth``: self-blended pseudo-fakes (SBI) written as a prepared dataset."""

from __future__ import annotations

import os

from dftune.commands import add_parser, add_progress, add_workers, defaults, group, renamed

DESCRIPTION = """\
Make self-blended images (SBI): each real crop of the chosen splits becomes a
pseudo-fake by blending its face with a slightly altered copy of itself (colour,
sharpness, small scale/shift) through a soft, randomly deformed face mask (from the
manifest's landmarks when prepare ran with --landmarks, else from the crop's face
box). Writes a new prepared folder: the input's crops (hard-linked) plus the
pseudo-fakes (method SBI, label fake) and one manifest, ready for `dftune train --data`.
Validation and test data are left as they are unless you name them with --split.
Then: dftune train --data data/ffpp-c23-sbi --model ... --out runs/sbi
"""


def register(sub) -> None:
    from dftune.stages.synth import SynthConfig

    d = defaults(SynthConfig)
    p = add_parser(sub, "synth", "self-blended pseudo-fakes (SBI) from real crops, as a prepared dataset", DESCRIPTION,
                   examples=("dftune synth --data data/ffpp-c23 --out data/ffpp-c23-sbi",
                             "dftune synth --data data/ffpp-c23 --out data/sbi-only --no-keep-fakes   "
                             "# train on reals + SBI only"))
    p.add_argument("--data", required=True, help="prepared folder (manifest.csv + crops) from `dftune prepare`")
    p.add_argument("--out", required=True, help="new folder for the combined dataset")
    p.add_argument("--split", action="append", default=None, choices=("train", "val", "test"),
                   help=f"a split whose real crops are self-blended; repeat for several (default: "
                        f"{' '.join(d['splits'])})")
    p.add_argument("--per-real", type=int, default=d["per_real"], metavar="K", help="pseudo-fakes per real crop")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (same seed, same pseudo-fakes)")
    p.add_argument("--keep-fakes", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="keep the input's own fakes in the synthesised splits (--no-keep-fakes: reals + SBI only, "
                        "the SBI paper's training set) (default: on)")
    p.add_argument("--quality", type=int, default=d["quality"], help="JPEG quality of the pseudo-fakes")
    add_workers(p, f"all cores, {os.cpu_count() or 1} here")
    p.add_argument("--set", dest="sbi_set", action="append", default=[], metavar="KEY=VALUE",
                   help="SBI setting override, e.g. --set blend_ratios=1 --set elastic=0.1 "
                        "(see dftune.sbi.SBISettings)")
    add_progress(p)
    renamed(p, "--splits", "--split", dest="split", nargs="+", choices=("train", "val", "test"))
    group(p, {"pseudo-fakes": ["--split", "--per-real", "--keep-fakes", "--seed", "--set", "--quality"]})
    p.set_defaults(func=run)


def parse_sbi_sets(items: list[str]) -> dict:
    """``["elastic=0.1", "blend_ratios=0.5,1"]`` -> typed SBISettings overrides."""
    from dataclasses import fields

    from dftune.sbi import SBISettings

    types = {f.name: f.default for f in fields(SBISettings)}
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE; got {item!r}")
        k, v = (x.strip() for x in item.split("=", 1))
        if k not in types:
            raise ValueError(f"unknown SBI setting {k!r}; settings are: {', '.join(types)}")
        try:
            out[k] = tuple(float(x) for x in v.split(",")) if isinstance(types[k], tuple) else float(v)
        except ValueError:
            raise ValueError(f"--set {k}: expected number(s), got {v!r}") from None
    SBISettings.make(**out)  # validate now, with a clear message
    return out


def run(args) -> int:
    from dftune.stages import synth
    from dftune.stages.synth import SynthConfig

    cfg = SynthConfig(data=args.data, out=args.out, splits=tuple(args.split or SynthConfig.splits),
                      per_real=args.per_real, seed=args.seed, keep_fakes=args.keep_fakes, quality=args.quality,
                      workers=(os.cpu_count() or 1) if args.workers == "auto" else args.workers,
                      sbi=parse_sbi_sets(args.sbi_set), progress=args.progress)
    s = synth.run(cfg)
    print_summary(s)
    return 0 if s["pseudo_fakes"] else 1


def print_summary(s: dict) -> None:
    from rich.table import Table

    from dftune.progress import console

    con = console()
    t = Table(title=f"synth: {s['out']}")
    for col in ("split", "real crops", "fake crops", "of which SBI", "videos"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split in ("train", "val", "test"):
        c = s["crops"].get(split)
        if c:
            t.add_row(split, str(c["real"]), str(c["fake"]), str(c["methods"].get("SBI", 0)), str(c["videos"]))
    con.print(t)
    con.print(f"{s['pseudo_fakes']} pseudo-fakes from {s['from_reals']} real crops in {s['elapsed_s']} s; "
                  f"{s['kept_rows']} input rows kept, {s['dropped_fakes']} input fakes left out")
    for p in s["problems"][:5]:  # warnings: stderr
        console(stderr=True).print(f"[red]problem[/red] {p}", highlight=False)
    if s["n_problems"] > 5:
        console(stderr=True).print(f"... {s['n_problems'] - 5} more in {s['out']}/synth.json")
    con.print(f"manifest: {s['out']}/manifest.csv   use: dftune train --data {s['out']} ...")
