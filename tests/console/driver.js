// Drives one page of Debian's chromium for the debug console's tests.
//
// playwright-core (no browser download) launches the system chromium with a
// fresh profile. The Python test sends one JSON command per line on stdin and
// reads one JSON answer per line on stdout: {"ok": true, "result": ...} or
// {"ok": false, "error": "..."}. Commands act on the page with CSS selectors;
// every wait has a timeout, so a missing entry fails instead of hanging.
//
// Usage: node driver.js <chromium path> <profile dir>

"use strict";

const readline = require("readline");
const { chromium } = require("playwright-core");

const ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];
const TIMEOUT = 15000;

async function main() {
    const [executablePath, profile] = process.argv.slice(2);
    const context = await chromium.launchPersistentContext(profile, {
        executablePath,
        headless: true,
        args: ARGS,
        viewport: { width: 1280, height: 900 },
    });
    const page = context.pages()[0] || (await context.newPage());
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    page.on("console", (message) => {
        // a refused sign-in is a 401 the page handles; only report the rest
        const text = message.text();
        if (message.type() === "error" && !text.startsWith("Failed to load resource")) {
            errors.push(text);
        }
    });

    const commands = {
        goto: ({ url }) => page.goto(url).then(() => null),
        fill: ({ selector, value }) => page.fill(selector, value, { timeout: TIMEOUT }),
        click: ({ selector }) => page.click(selector, { timeout: TIMEOUT }),
        check: ({ selector, checked }) => page.setChecked(selector, checked, { timeout: TIMEOUT }),
        select: ({ selector, value }) => page.selectOption(selector, value, { timeout: TIMEOUT }),
        // waits until an element matches the selector and holds the text
        // (state "visible" unless told, e.g. "attached" for an option)
        wait: ({ selector, text, state }) =>
            page
                .locator(selector, text === undefined ? {} : { hasText: text })
                .first()
                .waitFor({ state: state || "visible", timeout: TIMEOUT })
                .then(() => null),
        // waits until an element's text is exactly the value
        waitText: ({ selector, value }) =>
            page
                .waitForFunction(
                    ([selector, value]) => {
                        const element = document.querySelector(selector);
                        return element !== null && element.textContent.trim() === value;
                    },
                    [selector, value],
                    { timeout: TIMEOUT }
                )
                .then(() => null),
        // texts of every element matching, and whether each is shown
        texts: ({ selector }) =>
            page.$$eval(selector, (elements) =>
                elements.map((element) => ({
                    text: element.textContent,
                    visible: !!(element.offsetWidth || element.offsetHeight),
                }))
            ),
        visible: ({ selector }) => page.isVisible(selector),
        evaluate: ({ expression }) => page.evaluate(expression),
        screenshot: ({ path }) => page.screenshot({ path, fullPage: true }).then(() => path),
        errors: () => errors.splice(0),
        close: async () => {
            await context.close();
            return null;
        },
    };

    const lines = readline.createInterface({ input: process.stdin });
    const answer = (value) => process.stdout.write(JSON.stringify(value) + "\n");
    for await (const line of lines) {
        let command;
        try {
            command = JSON.parse(line);
        } catch (error) {
            answer({ ok: false, error: "not JSON: " + line });
            continue;
        }
        const run = commands[command.op];
        if (!run) {
            answer({ ok: false, error: "unknown op " + command.op });
            continue;
        }
        try {
            const result = await run(command);
            answer({ ok: true, result: result === undefined ? null : result });
        } catch (error) {
            answer({ ok: false, error: String(error && error.message ? error.message : error) });
        }
        if (command.op === "close") break;
    }
    process.exit(0);
}

main().catch((error) => {
    process.stdout.write(JSON.stringify({ ok: false, error: "launch failed: " + error }) + "\n");
    process.exit(1);
});
