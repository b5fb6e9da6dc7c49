"""Upload routes: rdio-scanner's two call-upload endpoints and OpenMHz's `/{short_name}/upload`."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from quart import Blueprint, Response, request

from tr_vault.call import CallMeta
from tr_vault.errors import IntakeError, JournalError
from tr_vault.intake import openmhz, rdio
from tr_vault.intake.form import FormLimits, UploadForm, read_form
from tr_vault.web.context import WebContext

log = logging.getLogger(__name__)

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


def upload_blueprint(ctx: WebContext) -> Blueprint:
    bp = Blueprint("uploads", __name__)
    settings = ctx.settings
    limits = FormLimits(settings.max_upload_bytes, settings.idle_timeout)
    keys = settings.keys

    async def accept(
        protocol: str,
        audio_field: str,
        before_audio: Callable[[UploadForm], None],
        validate: Callable[[UploadForm], CallMeta],
    ) -> None:
        """Read, validate and durably store one upload; raises IntakeError to refuse it."""
        try:
            duplicate = await receive(audio_field, before_audio, validate)
        except IntakeError as exc:
            ctx.metrics.calls_received.labels(protocol=protocol, result=str(exc.status)).inc()
            raise
        result = "duplicate" if duplicate else "stored"
        ctx.metrics.calls_received.labels(protocol=protocol, result=result).inc()

    async def receive(
        audio_field: str,
        before_audio: Callable[[UploadForm], None],
        validate: Callable[[UploadForm], CallMeta],
    ) -> bool:
        if request.method != "POST":
            raise IntakeError(405, "Unsupported method\n")
        free = ctx.cache.free_bytes()  # one statvfs: cheaper inline than a thread hop
        if free < settings.min_free_mb * 1024 * 1024:
            raise IntakeError(
                507, "Insufficient storage on the server: the call was not stored, retry later\n"
            )
        with trio.move_on_after(settings.inflight_wait) as waited:
            await ctx.upload_slots.acquire()
        if waited.cancelled_caught:
            raise IntakeError(503, "Server busy: too many uploads in flight, retry later\n")
        try:
            form = await read_form(
                request.body,
                content_type=request.headers.get("Content-Type"),
                content_length=request.content_length,
                cache=ctx.cache,
                audio_field=audio_field,
                limits=limits,
                before_audio=before_audio,
            )
            try:
                meta = validate(form)
                assert form.audio is not None
                accepted = await ctx.intake.store(meta, form.audio)
            except JournalError as exc:
                log.warning("journal write failed, call refused with 503: %s", exc)
                raise IntakeError(
                    503, "The server could not record the call (journal busy); retry later\n"
                ) from None
            finally:
                form.discard()
        finally:
            ctx.upload_slots.release()
        log.debug("accepted call_id=%d duplicate=%s", accepted.call_id, accepted.duplicate)
        return accepted.duplicate

    @bp.route("/api/call-upload", methods=METHODS)
    async def rdio_call_upload() -> Response:
        await accept(
            "rdio",
            rdio.AUDIO_FIELD,
            rdio.early_key_check(keys),
            lambda form: rdio.call_upload(form, keys),
        )
        return text(rdio.SUCCESS)

    @bp.route("/api/trunk-recorder-call-upload", methods=METHODS)
    async def rdio_trunk_recorder_upload() -> Response:
        await accept(
            "rdio-tr",
            rdio.AUDIO_FIELD,
            rdio.early_key_check(keys),
            lambda form: rdio.trunk_recorder_call_upload(form, keys),
        )
        return text(rdio.SUCCESS)

    @bp.route("/<path:short_name>/upload", methods=METHODS)
    async def openmhz_upload(short_name: str) -> Response:
        system = openmhz.short_name(short_name)
        await accept(
            "openmhz",
            openmhz.AUDIO_FIELD,
            openmhz.early_key_check(system, keys),
            lambda form: openmhz.upload(system, form, keys),
        )
        return text(openmhz.SUCCESS)

    return bp
