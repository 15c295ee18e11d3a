"""A real uvicorn server on 127.0.0.1 for tests, and a stdlib HTTP client (multipart uploads, JSON)."""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence


@functools.cache
def shared_default_model():
    """The shipped default model, loaded once per test session (the service tests only read it)."""
    from phototag.model import load_model

    return load_model(None)


def keywords(tags: list[dict]) -> list[dict]:
    """The keywords of a default-model tag list: the broad categories it adds after them (animal, vehicle, people,
    ...) are not counted in ``top_k``."""
    model = shared_default_model()
    broad = {t for t, c in zip(model.tags, model.decision.categories, strict=True) if c}
    return [t for t in tags if t["tag"] not in broad]


@contextlib.contextmanager
def running_server(app, *, start_timeout: float = 60.0, stop_timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` on a free localhost port in a background thread; yields the base URL, stops on exit."""
    from phototag.serve import bind_socket, make_server

    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn-test")
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(stop_timeout)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"the test server did not stop within {stop_timeout} s")


def encode_multipart(
    files: Sequence[tuple[str, str, bytes, str]], fields: Sequence[tuple[str, str]] = ()
) -> tuple[bytes, str]:
    """``(body, content type)`` of a multipart/form-data request; ``files`` = (field, file name, bytes, type)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for field, filename, data, content_type in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, object, dict[str, str]]:
    """``(status, parsed JSON or text, headers)``; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        status, raw, got = err.code, err.read(), dict(err.headers)
    text = raw.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return status, text, got
    if status >= 400 and isinstance(parsed, dict):
        check_problem(parsed, status, got)
    return status, parsed, got


def check_problem(body: dict, status: int | None = None, headers: dict[str, str] | None = None) -> None:
    """Every JSON error answer of the service is an RFC 9457 problem with the status it was sent with."""
    if headers is not None:
        kind = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        assert kind.startswith("application/problem+json"), (kind, body)
    assert {"type", "title", "status", "detail", "code"} <= set(body), body
    assert body["type"] == f"urn:phototag:problem:{body['code']}" and body["title"], body
    if status is not None:
        assert body["status"] == status, body


def post_files(
    url: str,
    files: Sequence[tuple[str, str, bytes, str]],
    fields: Sequence[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> tuple[int, object, dict[str, str]]:
    body, content_type = encode_multipart(files, fields)
    return request(url, method="POST", body=body, content_type=content_type, headers=headers)


def post_json(url: str, data: object, headers: dict[str, str] | None = None) -> tuple[int, object, dict[str, str]]:
    return request(url, method="POST", body=json.dumps(data).encode(), content_type="application/json", headers=headers)
