"""`retrv serve`: warm models behind an HTTP API and a web page (the library: `retrv/serve/`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from retrv.cli.common import (
    AnnMemoryOption,
    CandidateTokensOption,
    DeviceOption,
    ForceAnswerOption,
    FusionWeightOption,
    GlanceImageTokensOption,
    GlanceTextTokensOption,
    MaxInspectionsOption,
    MaxNewTokensOption,
    QuietOption,
    ReasonerOption,
    RerankKOption,
    RerankMode,
    ScoreStyleOption,
    StorageOptionsOption,
    TrustRemoteCodeOption,
    VisualRetracingOption,
    handle_errors,
    notice,
    settings_from_flags,
    silence_library,
    stage2_settings,
    stderr_console,
)

ServeTokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        envvar="RETRV_TOKEN",
        help="Secret every API request must carry (Authorization: Bearer TOKEN; the page takes /#token=TOKEN).",
    ),
]


@handle_errors
def serve(
    ctx: typer.Context,
    index: Annotated[
        list[str] | None,
        typer.Option(
            "--index",
            "-i",
            metavar="NAME|DIR",
            help="Index to serve (repeatable; the first is the default). Default: RETRV_INDEX, the config, 'default'.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address to listen on; any but loopback needs --token or --insecure.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", min=0, max=65535, help="Port (0: a free one).")] = 8765,
    token: ServeTokenOption = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Serve a non-loopback --host without a token (anyone may search).")
    ] = False,
    rerank: Annotated[
        RerankMode | None,
        typer.Option(
            envvar="RETRV_RERANK",
            help="Stage 2 the server offers besides none: score or reason. Default: score with a reasoner, else none.",
        ),
    ] = None,
    reasoner: ReasonerOption = None,
    rerank_k: RerankKOption = None,
    fusion_weight: FusionWeightOption = None,
    max_inspections: MaxInspectionsOption = None,
    max_new_tokens: MaxNewTokensOption = None,
    force_answer: ForceAnswerOption = False,
    candidate_tokens: CandidateTokensOption = None,
    glance_image_tokens: GlanceImageTokensOption = None,
    glance_text_tokens: GlanceTextTokensOption = None,
    score_style: ScoreStyleOption = None,
    visual_retracing: VisualRetracingOption = None,
    device: DeviceOption = None,
    storage_options: StorageOptionsOption = None,
    ann_memory: AnnMemoryOption = None,
    trust_remote_code: TrustRemoteCodeOption = False,
    max_upload_mb: Annotated[
        float, typer.Option(metavar="MB", min=0.001, help="Largest request body (an uploaded image), in MiB.")
    ] = 20.0,
    request_timeout: Annotated[
        float, typer.Option(metavar="SECONDS", min=0.001, help="Longest a request may take (408 after).")
    ] = 120.0,
    reasoner_queue: Annotated[
        int, typer.Option(metavar="N", min=0, help="Requests that may wait for the reasoner (503 beyond).")
    ] = 8,
    log_requests: Annotated[bool, typer.Option("--log-requests", help="Log every request on stderr.")] = False,
    quiet: QuietOption = False,
) -> None:
    """Serve indexes over HTTP with warm models: a JSON API, thumbnails and a web page (docs/cli.md).

    Prints the URL on stdout and serves until Ctrl-C (exit 130).
    """
    from retrv.serve.app import create_app
    from retrv.serve.run import check_binding, is_loopback, listen, require_server_packages, serve_forever, url_of
    from retrv.serve.service import SearchService, ServeLimits

    silence_library(quiet)
    require_server_packages()
    check_binding(host, token=token, insecure=insecure)
    settings = settings_from_flags(
        ctx, device=device, storage_options=storage_options, ann_memory=ann_memory, **stage2_settings(ctx)
    )
    limits = ServeLimits(
        max_upload_bytes=int(max_upload_mb * 2**20),
        request_seconds=request_timeout,
        max_megapixels=settings.max_megapixels,
        reasoner_queue=reasoner_queue,
    )
    sock = listen(host, port)  # before the models load: a port in use fails at once
    service = SearchService.open(
        settings,
        index or [],
        limits=limits,
        force_answer=force_answer,
        trust_remote_code=trust_remote_code,
        notify=notice(quiet),
    )
    app = create_app(service, token=token, loopback_only=is_loopback(host))
    url = url_of(sock)
    print(url + (f"#token={token}" if token else ""), flush=True)
    if not quiet:
        names = ", ".join(s.name for s in service.served)
        modes = " or ".join(service.rerank_modes)
        stderr_console().print(f"serving {names} (rerank {modes}) at {url}; Ctrl-C stops", markup=False)
    try:
        serve_forever(app, sock, log_requests=log_requests)
    except KeyboardInterrupt:
        print("retrv: server stopped", file=sys.stderr)
        raise typer.Exit(130) from None
    # Stopped by a signal that needs no exit status of its own: SIGINT where it was ignored (a background job).
    print("retrv: server stopped", file=sys.stderr)
