"""The web page in a real browser: headless Chromium (Debian's `chromium` package, driven by Playwright through
`executable_path`; `playwright install` is never run) loads /, classifies a Korean sentence, chats over WS /v1/chat
and saves a screenshot.

The server runs in this test's event loop; Chromium is a separate process. By default it serves the tiny random model
of the other tests; GAMJEONG_BROWSER_MODEL=DIR serves another exported directory (the README's screenshot comes from
a trained one) and GAMJEONG_SCREENSHOT=PATH says where the screenshot goes. Where Chromium is missing the test skips,
unless GAMJEONG_REQUIRE_BROWSER=1 (set by .ci/run, which installs it): then it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gamjeong.labels import LABEL_NAMES, LABEL_NAMES_KO
from gamjeong.server.app import GamjeongServer
from gamjeong.server.settings import load_settings

SENTENCE = "오늘 시험에 합격해서 정말 기뻐요!"
CHAT = ("헐 이게 진짜야? 완전 놀랐어", "밤길이 너무 무서워요 ㅠㅠ")


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (apt-get install chromium fonts-noto-cjk)"
        if os.environ.get("GAMJEONG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def has_korean_font() -> bool:
    try:
        listed = subprocess.run(["fc-list", ":lang=ko"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(listed.strip())


async def test_the_page_classifies_and_chats_in_headless_chromium(tiny_int8_dir: Path, tmp_path: Path) -> None:
    executable = chromium_path()
    playwright_api = pytest.importorskip("playwright.async_api")
    if not has_korean_font():  # the DOM checks pass without one, but Hangul would be boxes in the screenshot
        pytest.fail("no Korean font (fc-list :lang=ko is empty); apt-get install fonts-noto-cjk")
    model = Path(os.environ.get("GAMJEONG_BROWSER_MODEL", tiny_int8_dir))
    screenshot = Path(os.environ.get("GAMJEONG_SCREENSHOT", tmp_path / "page.png"))
    settings = load_settings(model=model, host="127.0.0.1", port=0, metrics_port=-1, http_port=0, grace_s=5, drain_s=0)
    server = GamjeongServer(settings)
    await server.start()
    try:
        async with playwright_api.async_playwright() as playwright:
            # --no-sandbox: CI and this machine run as root, where Chromium's sandbox refuses to start.
            browser = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 860}, locale="ko-KR")
                page.set_default_timeout(30_000)
                console_errors: list[str] = []
                page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
                await page.goto(f"http://127.0.0.1:{server.http_port}/")
                await page.wait_for_function("document.getElementById('model-backend').hidden === false")
                assert "예:" in (await page.locator("#text").get_attribute("placeholder") or "")
                assert (await page.locator("#model-name").inner_text()).startswith("모델 ")

                await page.fill("#text", SENTENCE)
                await page.click("#classify")
                await page.wait_for_selector("#result:not([hidden])")
                bars = page.locator("#bars .bar")
                assert await bars.count() == 7
                for i, (ko, en) in enumerate(zip(LABEL_NAMES_KO, LABEL_NAMES, strict=True)):
                    name = (await bars.nth(i).locator(".name").inner_text()).replace(" ", "")
                    assert name == f"{ko}{en}", name  # Korean and English names, in id order
                assert await page.locator("#bars .bar.top").count() == 1
                top_label = await page.locator("#bars .bar.top").get_attribute("data-label")
                assert (await page.locator("#top-en").inner_text()) == top_label
                assert "ms" in await page.locator("#timing").inner_text()

                await page.wait_for_selector("#chat-status.on")
                for message in CHAT:
                    await page.fill("#chat-input", message)
                    await page.click("#chat-send")
                await page.wait_for_function(
                    "document.querySelectorAll('#messages .bubble .tag[data-label]').length === 2"
                )
                bubbles = page.locator("#messages .bubble")
                assert await bubbles.count() == 2
                for i, message in enumerate(CHAT):
                    assert await bubbles.nth(i).locator(".text").inner_text() == message
                    tag = bubbles.nth(i).locator(".tag")
                    assert await tag.get_attribute("data-label") in LABEL_NAMES
                    assert (await tag.inner_text()).split()[0] in LABEL_NAMES_KO
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(screenshot), full_page=True)
                assert not console_errors, console_errors

                # Readable on a phone: one column, nothing wider than the screen.
                await page.set_viewport_size({"width": 390, "height": 844})
                scroll_width = await page.evaluate("document.documentElement.scrollWidth")
                assert scroll_width <= 390
                await page.screenshot(path=str(screenshot.with_name(f"{screenshot.stem}-phone.png")), full_page=True)
            finally:
                await browser.close()
    finally:
        await server.stop(0)
    assert screenshot.stat().st_size > 10_000
