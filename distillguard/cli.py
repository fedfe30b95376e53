"""The ``distillguard`` command line: parse arguments, load config, call the library; nothing else.

Exit codes: 0 success, 2 usage or input errors (``DistillguardError``), 3 evidence that
fails verification (``verify``), 1 anything unexpected.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console

from distillguard.core.errors import ConfigError, DistillguardError, InvalidInputError

app = typer.Typer(
    name="distillguard",
    help="Find and stop distillation attacks on an LLM API without hurting real customers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

LogDir = Annotated[
    Path, typer.Argument(help="A log directory in the data contract.", show_default=False)
]
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Directory to write results into.")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file overlaying the packaged defaults.")
]


def _fail(exc: DistillguardError) -> None:
    if isinstance(exc, InvalidInputError):
        err.print(f"[bold red]invalid input[/]: {len(exc.problems) + exc.truncated} problem(s)")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        if exc.truncated:
            err.print(f"  ... and {exc.truncated} more problems of the same kinds")
    else:
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def validate(
    logdir: LogDir,
    config: ConfigOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON to this file.")
    ] = None,
) -> None:
    """Check a log directory against the data contract: print a summary, or every problem found."""
    from distillguard.core.config import load_config
    from distillguard.ingest.validate import render_summary, validate_logdir, write_summary_json

    try:
        summary = validate_logdir(logdir, load_config(config))
    except InvalidInputError as exc:
        # One problem per line, unwrapped, so each names file, row and column in full.
        err.print(f"[bold red]invalid input[/]: {len(exc.problems) + exc.truncated} problem(s)")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
        if exc.truncated:
            err.print(f"  ... and {exc.truncated} more problems of the same kinds", soft_wrap=True)
        raise typer.Exit(code=2) from None
    except DistillguardError as exc:
        _fail(exc)
        return
    render_summary(summary, out)
    if json_out is not None:
        write_summary_json(summary, json_out)


@app.command()
def evaluate(
    logdir: LogDir,
    resultdir: Annotated[
        Path,
        typer.Argument(help="Output directory of `detect` and/or `replay`.", show_default=False),
    ],
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to write evaluation.json/.md [default: RESULTDIR]."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Score detect/replay results against the log's labels.csv: recall, false positives, containment."""
    from distillguard.core.config import load_config
    from distillguard.evaluate import evaluate_run, write_evaluation
    from distillguard.evaluate.report import render

    try:
        report = evaluate_run(logdir, resultdir, load_config(config))
        json_path, md_path = write_evaluation(report, out_dir if out_dir is not None else resultdir)
    except DistillguardError as exc:
        _fail(exc)
        return
    render(report, out)
    out.print(f"wrote {json_path} and {md_path}", highlight=False)


@app.command("plot-traffic")
def plot_traffic(
    logdir: LogDir,
    png: Annotated[
        Path, typer.Option("--out", "-o", help="PNG file to write.", show_default=False)
    ],
    by: Annotated[
        str, typer.Option("--by", help="Series: persona, label or campaign.")
    ] = "persona",
    bin_width: Annotated[str, typer.Option("--bin", help="Time bin, e.g. 15min, 1h, 1d.")] = "1h",
    log_y: Annotated[
        bool, typer.Option("--log-y", help="Logarithmic y axis (lines, not stacked).")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Plot a labelled log's exchanges per time bin, attack campaigns drawn apart."""
    from distillguard.core.config import load_config
    from distillguard.evaluate.plot import GROUP_BY_CHOICES, GroupBy
    from distillguard.evaluate.plot import plot_traffic as plot

    if by not in GROUP_BY_CHOICES:
        err.print(
            f"[bold red]error[/]: --by must be one of {', '.join(GROUP_BY_CHOICES)}",
            highlight=False,
        )
        raise typer.Exit(code=2)
    try:
        result = plot(
            logdir,
            png,
            by=cast(GroupBy, by),
            bin_width=bin_width,
            log_y=log_y,
            config=load_config(config),
        )
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(
        f"wrote {result.path}: {result.exchanges} exchanges, {len(result.series)} series, "
        f"{result.bins} bins",
        highlight=False,
    )


@app.command()
def keygen(
    out_file: Annotated[
        Path, typer.Option("--out", "-o", help="Private key file to create (PEM, mode 0600).")
    ],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key file.")] = False,
) -> None:
    """Create an Ed25519 key for signing case files; print its public fingerprint to publish."""
    from distillguard.evidence.signing import generate_signing_key, write_signing_key

    try:
        fingerprint = write_signing_key(out_file, generate_signing_key(), overwrite=force)
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(f"wrote {out_file}; public key fingerprint {fingerprint}", highlight=False)


@app.command()
def verify(
    target: Annotated[
        Path | None,
        typer.Argument(help="A case directory or disclosure bundle.", show_default=False),
    ] = None,
    proof: Annotated[
        Path | None, typer.Option("--proof", help="Check this inclusion proof (JSON) instead.")
    ] = None,
    root: Annotated[
        str | None, typer.Option("--root", help="With --proof: the published Merkle root (hex).")
    ] = None,
    tree_size: Annotated[
        int | None, typer.Option("--tree-size", help="With --proof: the published tree size.")
    ] = None,
    expect_key: Annotated[
        str | None,
        typer.Option("--expect-key", help="Require this signing-key fingerprint (sha256:...)."),
    ] = None,
) -> None:
    """Check a case file or disclosure bundle end to end, or one inclusion proof against a root.

    Exit 0 when the evidence holds, 3 when it does not (each failure is printed), 2 on errors.
    """
    from distillguard.evidence.casefile import PROOFS, check_proof, verify_case, verify_disclosure
    from distillguard.evidence.merkle import InvalidProofError

    try:
        if proof is not None:
            if root is None:
                raise DistillguardError("--proof needs --root: the published root to check against")
            try:
                text = proof.read_bytes()
            except OSError as exc:
                raise DistillguardError(f"cannot read {proof}: {exc.strerror}") from exc
            try:
                parsed = check_proof(text, root, tree_size)
            except InvalidProofError as exc:
                err.print(f"[bold red]FAILED[/]: {proof}: {exc}", highlight=False)
                raise typer.Exit(code=3) from exc
            out.print(
                f"[green]OK[/]: {proof}: leaf {parsed.leaf_index} of {parsed.tree_size} is in root {root}",
                highlight=False,
            )
            return
        if target is None:
            raise DistillguardError("give a case directory or bundle, or --proof FILE --root HEX")
        is_bundle = (target / PROOFS).exists()
        report = (verify_disclosure if is_bundle else verify_case)(target, expected_key=expect_key)
    except DistillguardError as exc:
        _fail(exc)
        return
    for failure in report.failures:
        err.print(f"[bold red]FAILED[/]: {failure}", highlight=False)
    if not report.ok:
        err.print(f"{report.subject}: {len(report.failures)} check(s) failed", highlight=False)
        raise typer.Exit(code=3)
    out.print(
        f"[green]OK[/]: {report.subject}: {len(report.checks)} checks passed", highlight=False
    )


@app.command()
def prove(
    case_dir: Annotated[Path, typer.Argument(help="A case directory.", show_default=False)],
    request_id: Annotated[str, typer.Argument(help="The exchange to prove.", show_default=False)],
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the proof here instead of stdout.")
    ] = None,
) -> None:
    """Emit the inclusion proof of one exchange in a case file's signed Merkle root."""
    from distillguard.core.atomic import write_text_atomic
    from distillguard.evidence.casefile import prove as prove_exchange

    try:
        text = prove_exchange(case_dir, request_id).dumps() + "\n"
    except DistillguardError as exc:
        _fail(exc)
        return
    if out_file is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(out_file, text)


@app.command()
def disclose(
    case_dir: Annotated[Path, typer.Argument(help="A case directory.", show_default=False)],
    request_ids: Annotated[
        list[str], typer.Argument(help="Exchanges to disclose.", show_default=False)
    ],
    out_dir: OutDir,
    expect_key: Annotated[
        str | None,
        typer.Option("--expect-key", help="Require this signing-key fingerprint (sha256:...)."),
    ] = None,
) -> None:
    """Write a disclosure bundle: signed manifest, root and proofs, prompts and IPs only as hashes."""
    from distillguard.evidence.casefile import disclose as disclose_exchanges

    try:
        bundle = disclose_exchanges(case_dir, request_ids, out_dir, expected_key=expect_key)
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(f"wrote {bundle} with {len(set(request_ids))} proof(s)", highlight=False)


@app.command()
def simulate(
    scenario: Annotated[
        str, typer.Option("--scenario", help="default, benign, low-and-slow, or one campaign.")
    ] = "default",
    scale: Annotated[str, typer.Option("--scale", help="tiny, small, medium or seed.")] = "small",
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; equal seeds give identical files.")
    ] = 0,
    out_dir: OutDir = Path("runs/sim"),
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Campaign knob override, e.g. june2026.cover_traffic=0.3."),
    ] = None,
    address_space: Annotated[
        str,
        typer.Option(
            "--address-space",
            help="full: every prefix of each network, each address equally likely, mobile "
            "carriers behind CGNAT (the default); sampled: 12 prefixes per network, each equally "
            "likely (the default before session 20, for older figures).",
        ),
    ] = "full",
) -> None:
    """Generate a labelled log directory of benign personas and attack campaigns."""
    from distillguard.simulate import parse_sets
    from distillguard.simulate import simulate as run_simulation

    try:
        summary = run_simulation(
            scenario,
            scale,
            seed,
            out_dir,
            parse_sets(sets or []),
            console=err,
            address_space=address_space,
        )
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(
        f"wrote {summary.out}: {summary.exchanges:,} exchanges, {summary.accounts:,} accounts "
        f"({summary.attack_accounts:,} attack), {summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s"
    )


@app.command()
def detect(
    logdir: Annotated[
        str,
        typer.Argument(
            help="A log directory in the data contract (with --engine spark also a URI: hdfs://, s3://, ...).",
            show_default=False,
        ),
    ],
    out_dir: OutDir,
    config: ConfigOpt = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="embedded (in process) or spark (relational stages on Apache Spark; docs/spark.md).",
        ),
    ] = "embedded",
    indicators: Annotated[
        Path | None,
        typer.Option(
            "--indicators", help="Peer indicator store (from `share import`): one more signal."
        ),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="Sharing-group key, to match peers' keyed identifiers."),
    ] = None,
) -> None:
    """Judge a log directory: write verdicts.jsonl, campaigns.json and report.html to --out."""
    from distillguard.core.config import load_config
    from distillguard.core.indicators import use_indicator_store
    from distillguard.pipeline import detect as run_detect

    try:
        if engine not in ("embedded", "spark"):
            raise ConfigError(f"--engine {engine!r}: choose embedded or spark")
        result = run_detect(
            logdir,
            out_dir,
            use_indicator_store(load_config(config), indicators, key_file),
            engine=engine,
        )
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(
        f"{len(result.verdicts)} account(s) above allow, "
        f"{len(result.campaigns['campaigns'])} campaign(s) → {out_dir}"
    )


@app.command()
def report(
    logdir: LogDir,
    resultdir: Annotated[
        Path, typer.Argument(help="Output directory of `detect`.", show_default=False)
    ],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="HTML file to write [default: RESULTDIR/report.html]."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Regenerate the analyst's report (self-contained HTML) from detect's outputs and the log."""
    from distillguard.core.config import load_config
    from distillguard.evidence.report import build_report, report_data_from_outputs

    target = out_file if out_file is not None else resultdir / "report.html"
    try:
        build_report(report_data_from_outputs(logdir, resultdir, load_config(config)), target)
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(f"wrote {target}", highlight=False)


share_app = typer.Typer(
    help="Share campaign indicators with peer providers (STIX 2.1 / TAXII 2.1).",
    no_args_is_help=True,
)
app.add_typer(share_app, name="share")
KeyFile = Annotated[
    Path, typer.Option("--key-file", help="Sharing-group key (from `share keygen`).")
]
TaxiiUrl = Annotated[str | None, typer.Option("--taxii", help="TAXII 2.1 collection URL.")]
TaxiiUser = Annotated[str | None, typer.Option("--user", help="TAXII user.")]
TaxiiPassword = Annotated[
    str | None,
    typer.Option("--password", envvar="DISTILLGUARD_TAXII_PASSWORD", help="TAXII password."),
]


@share_app.command("keygen")
def share_keygen(
    path: Annotated[Path, typer.Argument(help="Key file to create.", show_default=False)],
) -> None:
    """Make a random sharing-group key; give it to every member of the group out of band."""
    from distillguard.share.api import keygen

    if path.exists():
        err.print(
            f"[bold red]error[/]: {path} exists; refusing to overwrite a group key", highlight=False
        )
        raise typer.Exit(code=2)
    out.print(f"wrote {path} (key id {keygen(path)})", highlight=False)


@share_app.command("export")
def share_export(
    results: Annotated[Path, typer.Option("--results", help="Output directory of `detect`.")],
    log: Annotated[Path, typer.Option("--log", help="The log directory `detect` read.")],
    key_file: KeyFile,
    producer: Annotated[
        str, typer.Option("--producer", help="Your organisation's name (STIX identity).")
    ],
    bundle: Annotated[
        Path | None, typer.Option("--out", "-o", help="Bundle file to write.")
    ] = None,
    taxii: TaxiiUrl = None,
    user: TaxiiUser = None,
    password: TaxiiPassword = None,
    tlp: Annotated[str, typer.Option("--tlp", help="clear, green, amber or red.")] = "amber",
    config: ConfigOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", help="stix (bundle) or misp (MISP event JSON, file only).")
    ] = "stix",
) -> None:
    """Turn detected campaigns into a keyed STIX 2.1 bundle (file and/or TAXII collection) or MISP events."""
    from distillguard.core.config import load_config
    from distillguard.core.indicators import GroupKey
    from distillguard.share.api import export_campaigns
    from distillguard.share.taxii import TaxiiTarget

    if fmt not in ("stix", "misp"):
        err.print(f"[bold red]error[/]: --format {fmt!r}: choose stix or misp", highlight=False)
        raise typer.Exit(code=2)
    if fmt == "misp":
        _share_export_misp(results, log, key_file, producer, bundle, taxii, tlp, config)
        return
    if bundle is None and taxii is None:
        err.print("[bold red]error[/]: give --out FILE and/or --taxii URL", highlight=False)
        raise typer.Exit(code=2)
    try:
        summary = export_campaigns(
            results, log, GroupKey.load(key_file), producer=producer, out=bundle, tlp=tlp, config=load_config(config),
            taxii=TaxiiTarget(taxii, user, password) if taxii else None,
        )  # fmt: skip
    except DistillguardError as exc:
        _fail(exc)
        return
    kinds = ", ".join(f"{n} {t}" for t, n in sorted(summary.objects_by_type.items()))
    out.print(f"exported {summary.campaigns} campaign(s): {kinds}", highlight=False)
    if summary.vetoed:
        out.print(f"withheld (shared with benign traffic): {summary.vetoed}", highlight=False)
    if summary.published is not None:
        out.print(
            f"TAXII: {summary.published.status}, {summary.published.success_count} added",
            highlight=False,
        )


def _share_export_misp(
    results: Path,
    log: Path,
    key_file: Path,
    producer: str,
    target: Path | None,
    taxii: str | None,
    tlp: str,
    config: Path | None,
) -> None:
    from distillguard.core.config import load_config
    from distillguard.core.indicators import GroupKey
    from distillguard.share.misp import export_misp

    if target is None or taxii is not None:
        err.print(
            "[bold red]error[/]: --format misp writes a file: give --out FILE (TAXII carries STIX only)",
            highlight=False,
        )
        raise typer.Exit(code=2)
    try:
        summary = export_misp(results, log, GroupKey.load(key_file), producer=producer, out=target, tlp=tlp,
                              config=load_config(config))  # fmt: skip
    except DistillguardError as exc:
        _fail(exc)
        return
    kinds = ", ".join(
        f"{n} {t}"
        for t, n in sorted({**summary.attributes_by_type, **summary.objects_by_name}.items())
    )
    out.print(f"exported {summary.events} MISP event(s) to {target}: {kinds}", highlight=False)
    if summary.vetoed:
        out.print(f"withheld (shared with benign traffic): {summary.vetoed}", highlight=False)


@share_app.command("import")
def share_import(
    bundle: Annotated[Path | None, typer.Argument(help="A peer's STIX 2.1 bundle file.")] = None,
    store: Annotated[
        Path, typer.Option("--store", help="Indicator store (Parquet) to merge into.")
    ] = Path("indicators.parquet"),
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="Sharing-group key, to check key ids.")
    ] = None,
    taxii: TaxiiUrl = None,
    user: TaxiiUser = None,
    password: TaxiiPassword = None,
    max_bytes: Annotated[int, typer.Option("--max-bytes", help="Refuse larger bundles.")] = 16
    * 1024
    * 1024,
) -> None:
    """Validate a peer's bundle (file or TAXII collection) into the indicator store, with provenance."""
    from distillguard.core.indicators import GroupKey
    from distillguard.share.api import import_bundle
    from distillguard.share.importer import ImportLimits
    from distillguard.share.taxii import TaxiiTarget

    if (bundle is None) == (taxii is None):
        err.print(
            "[bold red]error[/]: give a bundle FILE or --taxii URL (one of them)", highlight=False
        )
        raise typer.Exit(code=2)
    try:
        summary = import_bundle(
            store, path=bundle, taxii=TaxiiTarget(taxii, user, password) if taxii else None,
            key=GroupKey.load(key_file) if key_file else None, limits=ImportLimits(max_bytes=max_bytes),
        )  # fmt: skip
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(
        f"imported {summary.added_rows} indicator value(s) from {', '.join(summary.peers) or 'no peer'}; "
        f"store {summary.store} now holds {summary.store_rows}"
        + (f"; skipped {summary.skipped}" if summary.skipped else ""),
        highlight=False,
    )


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address [default: enforce.service.host].")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port [default: enforce.service.port].")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="memory or redis [default: enforce.backend].")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis URL [default: enforce.redis_url].")
    ] = None,
    campaigns: Annotated[
        Path | None, typer.Option("--campaigns", help="Results dir of the latest detect.")
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option("--insecure-no-auth", help="Run without a bearer key (loopback tests only)."),
    ] = False,
) -> None:
    """Run the HTTP decision service (POST /v1/check, /v1/record; GET /v1/accounts/ID, /healthz, /metrics)."""
    from distillguard.enforce.cli import run_service

    try:
        run_service(
            config,
            host,
            port,
            backend,
            redis_url,
            campaigns,
            insecure_no_auth,
            gateway_upstream=None,
            logdir=None,
        )
    except DistillguardError as exc:
        _fail(exc)


@app.command()
def gateway(
    upstream: Annotated[
        str, typer.Option("--upstream", help="Base URL of the Anthropic/OpenAI-compatible API.")
    ],
    logdir: Annotated[
        Path, typer.Option("--log-dir", help="Log directory every exchange is appended to.")
    ],
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="memory or redis.")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Redis URL.")] = None,
    campaigns: Annotated[
        Path | None, typer.Option("--campaigns", help="Results dir of the latest detect.")
    ] = None,
) -> None:
    """Run a checking reverse proxy in front of an Anthropic- or OpenAI-compatible API."""
    from distillguard.enforce.cli import run_service

    try:
        run_service(
            config,
            host,
            port,
            backend,
            redis_url,
            campaigns,
            True,
            gateway_upstream=upstream,
            logdir=logdir,
        )
    except DistillguardError as exc:
        _fail(exc)


@app.command()
def replay(
    logdir: LogDir,
    out_dir: OutDir,
    config: ConfigOpt = None,
    campaigns: Annotated[
        Path | None, typer.Option("--campaigns", help="Results dir of an earlier detect.")
    ] = None,
) -> None:
    """Replay a log through the online path in time order; write decisions.jsonl (contract §3)."""
    from distillguard.core.config import load_config
    from distillguard.enforce.replay import replay as run_replay

    try:
        summary = run_replay(logdir, out_dir, load_config(config), campaigns)
    except DistillguardError as exc:
        _fail(exc)
        return
    out.print(
        f"replayed {summary.exchanges:,} exchanges of {summary.accounts:,} accounts in {summary.seconds:.1f} s "
        f"({summary.rate:,.0f}/s); {summary.decisions:,} decisions -> {summary.path}",
        highlight=False,
    )


def _configure_logging() -> None:
    """``DISTILLGUARD_LOG`` (a level name: debug, info, ...) turns on the library's logs on stderr;
    unset, they stay off so the progress bars and tables are the only output."""
    level = os.environ.get("DISTILLGUARD_LOG", "").strip().upper()
    if not level:
        return
    if level not in logging.getLevelNamesMapping():
        err.print(f"[bold red]error[/]: DISTILLGUARD_LOG={level.lower()!r}: not a log level")
        sys.exit(2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    root = logging.getLogger("distillguard")
    root.addHandler(handler)
    root.setLevel(level)


def main() -> None:
    """Console-script entry point."""
    _configure_logging()
    try:
        app()
    except DistillguardError as exc:  # raised outside a command's own handler
        err.print(f"[bold red]error[/]: {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
