#!/usr/bin/env bash
# Checks the web page of `glimpse serve` in headless Chromium, for real: the page's
# own JavaScript captions an image, asks a question about it (a streamed chat
# completion), classifies it and searches an index, and the results must be in the page.
#
#   bash tools/serve/check_page.sh [SCREENSHOT.png]      (default docs/serve-page.png)
#
# It starts `glimpse serve` (GLIMPSE, default target/release/glimpse, else
# target/debug/glimpse, the first that has `serve`; the bundled models) on a free local
# port (PORT to choose one), waits for /health, and loads `/?demo=1&q=QUESTION` in
# Chromium. With `demo` the page loads the sample image embedded in it (a 72x72
# synthetic "pink square on a red background"), captions it (POST /v1/caption), asks
# QUESTION (POST /v1/chat/completions with stream: true, rendered as the events
# arrive), classifies it (POST /v1/classify), searches when asked (`&search=TEXT`,
# POST /v1/search) and sets <body data-demo="done"> (or "failed", with the error).
# `--dump-dom` after `--virtual-time-budget` gives the page as it then is (virtual time
# waits for the page's requests). The checks:
# - the demo says "done"; the page shows the caption and the answer (with their model
#   ids) that the same requests sent with curl get, on the sample taken out of the
#   served page; the four labels have scores; the server has no index and the page
#   says so and how to give one (`--index DIR`);
# - `/?demo=1&q=&model=CAPTION_MODEL`: a chat with the captioning model and no text,
#   whose caption streams in several pieces: put together, they are the caption;
# - a second server with `--index` (built here from examples/synth with
#   `glimpse index build`): the page's search for "a blue circle" lists as many results
#   as /v1/search, led by the same key. The 1280x900 screenshot is of this run.
# Both servers are stopped at the end, also on failure.
#
# The server serves the page compiled into it; GLIMPSE_PAGE=FILE makes it serve FILE
# instead (read at each request), e.g. crates/glimpse-serve/assets/index.html to check
# the page without rebuilding. Chromium comes from Debian (apt-get) when missing.
# Exit status 0 when every check holds, 1 otherwise.
set -euo pipefail

cd "$(dirname "$0")/../.."
shot=${1:-docs/serve-page.png}
question=${QUESTION:-what color is the square?}
labels="circle, square, triangle, star"

# GLIMPSE, else the release build, else the debug build (one that has `serve`).
glimpse=${GLIMPSE:-}
if [ -z "$glimpse" ]; then
    for c in target/release/glimpse target/debug/glimpse; do
        if [ -x "$c" ] && "$c" serve --help >/dev/null 2>&1; then glimpse=$c; break; fi
    done
fi
[ -n "$glimpse" ] && [ -x "$glimpse" ] || { echo "no glimpse binary with \`serve\`: build it (cargo build) or set GLIMPSE" >&2; exit 1; }

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "Chromium is missing and there is no sudo to install it" >&2; exit 1; }
        sudo=sudo
    fi
    echo "installing chromium from Debian" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi
echo "browser: $("$browser" --version 2>/dev/null)" >&2

tmp=$(mktemp -d)
server=""
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# start_server ARGS...: starts `glimpse serve ARGS` on a free port, sets $base, waits for /health.
start_server() {
    local port=${PORT:-$(free_port)}
    base="http://127.0.0.1:$port"
    "$glimpse" serve --port "$port" "$@" > "$tmp/server.log" 2>&1 &
    server=$!
    echo "server: $glimpse serve --port $port $* (pid $server${GLIMPSE_PAGE:+, page from $GLIMPSE_PAGE})" >&2
    for _ in $(seq 1 240); do
        if ! kill -0 "$server" 2>/dev/null; then
            echo "the server exited:" >&2; cat "$tmp/server.log" >&2; exit 1
        fi
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ] && return 0
        sleep 0.5
    done
    echo "no 200 from /health after 120 s:" >&2; cat "$tmp/server.log" >&2; exit 1
}
stop_server() {
    if grep -qi 'panicked' "$tmp/server.log"; then
        fail "the server panicked:"; grep -i -A3 'panicked' "$tmp/server.log" >&2
    fi
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
}

fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
pass() { echo "ok: $*" >&2; }

start_server

# What the page should show: the same requests, with curl, on the sample the page holds.
curl -sf "$base/" > "$tmp/page.html"
if [ -n "${GLIMPSE_PAGE:-}" ]; then :; elif ! cmp -s "$tmp/page.html" crates/glimpse-serve/assets/index.html; then
    echo "note: the binary serves another page than crates/glimpse-serve/assets/index.html (rebuild it, or set GLIMPSE_PAGE)" >&2
fi
sample=$(sed -n 's/^const SAMPLE = "\(data:image\/png;base64,[A-Za-z0-9+\/=]*\)";$/\1/p' "$tmp/page.html")
[ -n "$sample" ] || { echo "FAIL: the served page has no embedded SAMPLE image (const SAMPLE = \"data:...\")" >&2; exit 1; }
q_json=$(QUESTION="$question" python3 -c 'import json, os; print(json.dumps(os.environ["QUESTION"]))')
curl -sf "$base/v1/caption" -H 'Content-Type: application/json' \
    -d "{\"image\": \"$sample\"}" > "$tmp/caption.json"
curl -sf "$base/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {\"url\": \"$sample\"}}, {\"type\": \"text\", \"text\": $q_json}]}]}" \
    > "$tmp/chat.json"
# The DOM dump escapes &, <, > (and " in attributes): compare escaped text.
esc='import html, json, sys; d = json.load(open(sys.argv[1])); print(html.escape(eval(sys.argv[2]), quote=False))'
caption=$(python3 -c "$esc" "$tmp/caption.json" 'd["text"]')
caption_model=$(python3 -c "$esc" "$tmp/caption.json" 'd["model"]')
answer=$(python3 -c "$esc" "$tmp/chat.json" 'd["choices"][0]["message"]["content"]')
answer_model=$(python3 -c "$esc" "$tmp/chat.json" 'd["model"]')
echo "expected: caption \"$caption\" ($caption_model), answer \"$answer\" ($answer_model)" >&2

flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --disable-extensions
       --no-first-run --disable-background-networking --disable-dev-shm-usage
       --user-data-dir="$tmp/profile" --window-size=1280,900 --virtual-time-budget=20000)
enc_q=$(QUESTION="$question" python3 -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["QUESTION"]))')
url="$base/?demo=1&q=$enc_q"
timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" > "$tmp/dom.html" 2> "$tmp/chromium.log" || {
    echo "FAIL: chromium --dump-dom failed:" >&2; tail -20 "$tmp/chromium.log" >&2; exit 1; }

demo=$(sed -n 's/.*<body[^>]* data-demo="\([a-z]*\)".*/\1/p' "$tmp/dom.html" | head -1)
if [ "$demo" = done ]; then
    pass "the page's demo ran to the end (data-demo=\"done\")"
else
    err=$(sed -n 's/.*data-demo-error="\([^"]*\)".*/\1/p' "$tmp/dom.html" | head -1)
    fail "the page's demo did not finish: data-demo=\"${demo:-absent}\" ${err:+($err)}"
fi
if grep -qF "id=\"caption-text\">$caption<span class=\"model\">— $caption_model</span>" "$tmp/dom.html"; then
    pass "caption \"$caption\" — $caption_model"
else
    fail "the page does not show the caption \"$caption\" ($caption_model)"
fi
if grep -qF "data-answer=\"$answer\">$answer<span class=\"model\">— $answer_model</span>" "$tmp/dom.html"; then
    pass "streamed answer \"$answer\" — $answer_model"
else
    fail "the page does not show the streamed answer \"$answer\" ($answer_model)"
fi
shown=$(grep -o '<li aria-label="[a-z]*: [0-9.]* percent">' "$tmp/dom.html" | wc -l)
if [ "$shown" -eq 4 ] && grep -q 'id="labels-out"' "$tmp/dom.html"; then
    pass "4 labels with scores: $(grep -o '<li aria-label="[a-z]*: [0-9.]* percent">' "$tmp/dom.html" | sed 's/.*label="\([^"]*\)".*/\1/' | paste -sd, -)"
else
    fail "the page shows $shown labels with scores, not 4 ($labels)"
fi
# A captioning model in the chat, with no text: the streamed pieces of its caption,
# put together, must make the caption above.
timeout 120 "$browser" "${flags[@]}" --dump-dom "$base/?demo=1&q=&model=$caption_model" > "$tmp/dom2.html" 2>> "$tmp/chromium.log" || true
if grep -qF "data-answer=\"$caption\">$caption<span class=\"model\">— $caption_model</span>" "$tmp/dom2.html"; then
    pass "chat with $caption_model streamed the caption \"$caption\""
else
    fail "chat with $caption_model (no text) did not stream the caption \"$caption\""
    sed -n '/<body/,/<\/main>/p' "$tmp/dom2.html" | grep -E 'data-demo|chat-log|class="error"' | head -c 2000 >&2
fi
index=$(curl -sf "$base/health" | python3 -c 'import json, sys; print(json.load(sys.stdin)["index"])')
if [ "$index" = None ]; then
    if grep -q '<div id="no-index" class="muted">' "$tmp/dom.html" && grep -qF -- '--index DIR' "$tmp/dom.html"; then
        pass "the page says that the server has no index and how to give one"
    else
        fail "the server has no index and the page does not say so"
    fi
fi

stop_server

# With an index (of examples/synth, built here): the page searches it, and its first
# result must be the one that /v1/search gives; the screenshot is of this run.
search="a blue circle"
"$glimpse" index build --data examples/synth --out "$tmp/synth-examples" > "$tmp/index.log" 2>&1 || {
    echo "FAIL: glimpse index build --data examples/synth:" >&2; cat "$tmp/index.log" >&2; exit 1; }
start_server --index "$tmp/synth-examples"
top=$(curl -sf "$base/v1/search" -H 'Content-Type: application/json' -d "{\"text\": \"$search\", \"k\": 10}" |
    python3 -c 'import html, json, sys; r = json.load(sys.stdin)["results"]; print(html.escape(r[0]["key"], quote=False), len(r))')
url="$base/?demo=1&q=$enc_q&search=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$search")"
timeout 120 "$browser" "${flags[@]}" --dump-dom "$url" > "$tmp/dom3.html" 2>> "$tmp/chromium.log" || true
rows=$(grep -o '<table id="search-results">.*</table>' "$tmp/dom3.html" | grep -o '<tr><td>' | wc -l)
if grep -q '<body[^>]* data-demo="done"' "$tmp/dom3.html" && [ "$rows" = "${top#* }" ] &&
    grep -qF "<tr><td>1</td><td>${top%% *}</td>" "$tmp/dom3.html"; then
    pass "search \"$search\" over the index: $rows results, first ${top%% *}"
else
    fail "the page's search \"$search\" does not show ${top#* } results led by ${top%% *} (it shows $rows)"
fi

mkdir -p "$(dirname "$shot")"
timeout 120 "$browser" "${flags[@]}" --screenshot="$shot" "$url" 2>> "$tmp/chromium.log" >/dev/null || fail "chromium --screenshot failed"
[ -s "$shot" ] && pass "screenshot $shot ($(stat -c %s "$shot") bytes, 1280x900)"
stop_server

if [ "$fails" -gt 0 ]; then
    echo "$fails check(s) failed; the page as Chromium left it:" >&2
    sed -n '/<body/,/<\/main>/p' "$tmp/dom.html" | head -c 6000 >&2
    exit 1
fi
echo "check_page: all checks passed" >&2
