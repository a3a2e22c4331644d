"""Headless Chromium driven two ways: its command line (``--dump-dom``, ``--screenshot``) and a minimal DevTools
protocol client over ``--remote-debugging-pipe`` (no websocket library needed).

TensorBoard's scalars, images and custom-scalars dashboards are Polymer elements whose content lives in shadow
roots, which ``--dump-dom`` does not serialise; the protocol client evaluates a script that walks the shadow roots
and waits, in real time and up to a deadline, until the expected text is there.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _processes import stop

# Without the networking switches Chromium stalls on a closed network (update checks, QUIC probes).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    # Time Series draws its charts with WebGL; without a GPU only the software (SwiftShader) WebGL draws anything
    "--enable-unsafe-swiftshader",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_cli(url: str, *mode: str, window: str = "1400,900", budget_ms: int = 10000, timeout: float = 60.0) -> str:
    """Run one headless Chromium on ``url`` with ``mode`` (e.g. ``--dump-dom``) and a fresh profile; return stdout.

    Raises:
        RuntimeError: when Chromium fails or exceeds ``timeout`` (its process group is killed).
    """
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        args = [
            chromium_path() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
            f"--window-size={window}", f"--virtual-time-budget={budget_ms}", *mode, url,
        ]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc, grace=2.0)
            raise RuntimeError(f"chromium did not finish within {timeout:.0f} s on {url}") from None
        finally:
            stop(proc, grace=2.0)
        if proc.returncode != 0:
            message = err.decode(errors="replace")[-2000:]
            raise RuntimeError(f"chromium exited with {proc.returncode} on {url}:\n{message}")
        return out.decode(errors="replace")


# Text of the page including every open shadow root (Polymer dashboards), plus the loaded <img> elements.
_DEEP_SCRIPT = r"""
((rootSelector) => {
  const find = (root) => {
    const hit = root.querySelector(rootSelector);
    if (hit) return hit;
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) { const inner = find(el.shadowRoot); if (inner) return inner; }
    }
    return null;
  };
  const start = rootSelector ? find(document) : document;
  if (!start) return JSON.stringify({text: '', images: 0, paths: 0, found: false});
  const texts = [], images = [];
  let paths = 0;
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) walk(el.shadowRoot);
      if (el.tagName === 'IMG' && el.complete && el.naturalWidth > 0) images.push(el.naturalWidth);
      // plotted series: SVG paths through several points (Plottable's line charts)
      if (el.tagName === 'path' && (el.getAttribute('d') || '').split(/[LC]/).length > 3) paths += 1;
      if (el.tagName === 'SCRIPT' || el.tagName === 'STYLE') continue;
      for (const node of el.childNodes) {
        if (node.nodeType === 3 && node.textContent.trim()) texts.push(node.textContent.trim());
      }
      for (const attr of ['title', 'aria-label']) { if (el.getAttribute(attr)) texts.push(el.getAttribute(attr)); }
    }
  };
  if (start.shadowRoot) walk(start.shadowRoot);
  walk(start);
  return JSON.stringify({text: texts.join('\n'), images: images.length, paths: paths, found: true});
})(%s)
"""


def _high_pipe() -> tuple[int, int]:
    """``os.pipe()`` moved to descriptors >= 100 (close-on-exec)."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100))
        os.close(fd)
    return ends[0], ends[1]


class DevToolsPage:
    """One headless Chromium with a single page, controlled over the DevTools protocol on fds 3 and 4."""

    def __init__(self, *, window: tuple[int, int] = (1400, 900), timeout: float = 30.0) -> None:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._timeout = timeout
        self._next_id = 0
        self._buffer = b""
        to_browser_r, self._to_browser = _high_pipe()
        self._from_browser, from_browser_w = _high_pipe()

        def remap() -> None:  # the protocol pipe is fd 3 (commands in) and fd 4 (answers out) in the child
            # the sources are >= 100, so neither dup2 can overwrite the other one's source
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [
            chromium_path() or "chromium", *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
            f"--window-size={window[0]},{window[1]}", "--remote-debugging-pipe", "about:blank",
        ]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # close_fds runs after preexec_fn in the child: keep the remapped 3 and 4 open
            pass_fds=(3, 4), preexec_fn=remap, start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        try:
            targets = self._call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self._session = self._call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            # --window-size sizes the window; the viewport (and the screenshots) must be exactly this size
            self.resize(*window)
        except BaseException:
            self.close()
            raise

    def _send(self, message: dict[str, Any]) -> int:
        self._next_id += 1
        message["id"] = self._next_id
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _receive(self, wanted: int) -> dict[str, Any]:
        deadline = time.monotonic() + self._timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if message.get("id") == wanted:
                    if "error" in message:
                        raise RuntimeError(f"DevTools error: {message['error']}")
                    return message.get("result", {})
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise RuntimeError(f"chromium did not answer within {self._timeout:.0f} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk

    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        return self._receive(self._send({"method": method, "params": params}))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a protocol command to the page's session and return its result."""
        return self._receive(self._send({"method": method, "params": params, "sessionId": self._session}))

    def resize(self, width: int, height: int) -> None:
        """Set the viewport (and so the screenshot) size."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def deep_content(self, root: str | None = None) -> dict[str, Any]:
        """Text under the first element matching the CSS selector ``root`` (searched through shadow roots; the whole
        document when None) including its shadow roots, as ``{"text", "images": loaded <img> count, "paths": SVG
        paths through more than three points, "found"}``."""
        return json.loads(self.evaluate(_DEEP_SCRIPT % json.dumps(root)))

    def wait_for_text(
        self,
        needles: list[str],
        *,
        root: str | None = None,
        min_images: int = 0,
        min_paths: int = 0,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll :meth:`deep_content` until every needle is in the text and enough images and chart lines are there;
        return the last content either way (the caller asserts, with the content in the message)."""
        deadline = time.monotonic() + timeout
        while True:
            content = self.deep_content(root)
            if (
                all(n in content["text"] for n in needles)
                and content["images"] >= min_images
                and content["paths"] >= min_paths
            ):
                return content
            if time.monotonic() > deadline:
                return content
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self._send({"method": "Browser.close", "params": {}})
                self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired, AttributeError):
            pass
        finally:
            stop(self.proc, grace=2.0)
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> DevToolsPage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
