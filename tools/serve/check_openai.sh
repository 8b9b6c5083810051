#!/usr/bin/env bash
# Checks the OpenAI-compatible API of `glimpse serve` with the official `openai`
# Python client and with curl, against the `glimpse` CLI.
#
#   bash tools/serve/check_openai.sh
#
# It starts `glimpse serve` (GLIMPSE, default target/release/glimpse, else
# target/debug/glimpse, the first that has `serve`; the bundled models) on a free local
# port (PORT to choose one) and waits for /health. Then:
# 1. tools/serve/check_openai.py URL (the openai client: chat with an image, streamed
#    and not; embeddings of texts and an image; models.list; compared with
#    `glimpse ask`, `glimpse caption` and `glimpse embed`). Its Python is tools/.venv
#    (made or completed by tools/setup_venv.sh when it lacks `openai`).
# 2. The same with curl, on examples/synth/blue-circle.png: a chat completion with the
#    image as a data: URL (answer = `glimpse ask --json`), the same streamed (the
#    deltas put together = that answer, ending with [DONE]), embeddings of a text and
#    the image (= `glimpse embed --json` within 1e-4), GET /v1/models.
# 3. Bad requests get a 4xx with an OpenAI error body (`error.message`): truncated
#    JSON (400), an unknown model (404), a data: URL that is not an image (422), image
#    bytes that do not decode (422), no image (422), no JSON content type (415).
# It stops the server at the end (also on failure). Exit status 0 when every check
# holds, 1 otherwise.
set -euo pipefail

cd "$(dirname "$0")/../.."
image=examples/synth/blue-circle.png
text="a blue circle"

glimpse=${GLIMPSE:-}
if [ -z "$glimpse" ]; then
    for c in target/release/glimpse target/debug/glimpse; do
        if [ -x "$c" ] && "$c" serve --help >/dev/null 2>&1; then glimpse=$c; break; fi
    done
fi
[ -n "$glimpse" ] && [ -x "$glimpse" ] || { echo "no glimpse binary with \`serve\`: build it (cargo build) or set GLIMPSE" >&2; exit 1; }
export GLIMPSE=$glimpse

py=tools/.venv/bin/python
if ! { [ -x "$py" ] && "$py" -c 'import openai' 2>/dev/null; }; then
    echo "tools/.venv has no openai: running tools/setup_venv.sh" >&2
    bash tools/setup_venv.sh >/dev/null
    "$py" -c 'import openai' 2>/dev/null || "$py" -m pip install --quiet openai >&2
fi

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

port=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
base="http://127.0.0.1:$port"
"$glimpse" serve --port "$port" > "$tmp/server.log" 2>&1 &
server=$!
echo "server: $glimpse serve --port $port (pid $server)" >&2
for _ in $(seq 1 240); do
    if ! kill -0 "$server" 2>/dev/null; then
        echo "the server exited:" >&2; cat "$tmp/server.log" >&2; exit 1
    fi
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ] && break
    sleep 0.5
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "$base/health")" = 200 ] || {
    echo "no 200 from /health after 120 s:" >&2; cat "$tmp/server.log" >&2; exit 1; }

fails=0
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
pass() { echo "ok   $*"; }

echo "== the openai client (tools/serve/check_openai.py)"
"$py" tools/serve/check_openai.py "$base" || fails=$((fails + 1))

echo "== curl"
# Request bodies are files: a data: URL is too long for an argument list.
url="data:image/png;base64,$(base64 -w0 "$image")"
question=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["qa"][0]["question"])' "${image%.png}.json")
python3 - "$url" "$question" "$text" "$tmp" <<'PY'
import json, sys
url, q, text, tmp = sys.argv[1:]
msgs = [{"role": "user", "content": [{"type": "text", "text": q},
                                      {"type": "image_url", "image_url": {"url": url}}]}]
json.dump({"messages": msgs}, open(f"{tmp}/chat.json", "w"))
json.dump({"messages": msgs, "stream": True}, open(f"{tmp}/stream.json", "w"))
json.dump({"model": "clip-synth", "input": [text, url]}, open(f"{tmp}/embed.json", "w"))
json.dump({"model": "no-such-model", "messages": msgs}, open(f"{tmp}/unknown.json", "w"))
bad = lambda u: {"messages": [{"role": "user", "content": [
    {"type": "text", "text": q}, {"type": "image_url", "image_url": {"url": u}}]}]}
json.dump(bad("data:text/plain;base64,aGVsbG8gd29ybGQ="), open(f"{tmp}/text_url.json", "w"))
json.dump(bad("data:image/png;base64,aGVsbG8gd29ybGQ="), open(f"{tmp}/not_png.json", "w"))
json.dump({"messages": [{"role": "user", "content": q}]}, open(f"{tmp}/no_image.json", "w"))
body = open(f"{tmp}/chat.json").read()
open(f"{tmp}/truncated.json", "w").write(body[: len(body) // 2])
PY
post() { curl -s -o "$tmp/$2.out" -w '%{http_code}' "$base$1" -H 'Content-Type: application/json' --data-binary "@$tmp/$2.json"; }
get_field() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$3"; }

want=$("$glimpse" ask --image "$image" --question "$question" --json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["answer"])')
code=$(post /v1/chat/completions chat)
if [ "$code" = 200 ]; then
    got=$(get_field x 'd["choices"][0]["message"]["content"]' "$tmp/chat.out")
    obj=$(get_field x 'd["object"] + " " + d["model"]' "$tmp/chat.out")
    [ "$got" = "$want" ] && [[ "$obj" == chat.completion* ]] && pass "chat ($obj) '$question' -> '$got' = glimpse ask" \
        || fail "chat: '$got' ($obj), glimpse ask says '$want'"
else
    fail "chat: HTTP $code: $(cat "$tmp/chat.out")"; got=""
fi

curl -sN "$base/v1/chat/completions" -H 'Content-Type: application/json' --data-binary "@$tmp/stream.json" > "$tmp/stream.out"
streamed=$(python3 - "$tmp/stream.out" <<'PY'
import json, sys
events = [l[6:].rstrip("\r\n") for l in open(sys.argv[1]) if l.startswith("data: ")]
if not events or events[-1] != "[DONE]":
    sys.exit("the stream does not end with [DONE]")
text, finish = "", None
for e in events[:-1]:
    d = json.loads(e)
    assert d["object"] == "chat.completion.chunk", d
    for c in d["choices"]:
        text += c["delta"].get("content") or ""
        finish = c.get("finish_reason") or finish
if finish not in ("stop", "length"):
    sys.exit(f"no finish_reason (got {finish!r})")
print(f"{len(events) - 1}|{text}")
PY
) && {
    n=${streamed%%|*}; s=${streamed#*|}
    [ "$s" = "$want" ] && pass "chat streamed ($n chunks, [DONE]) -> '$s' = non-streamed" \
        || fail "chat streamed '$s', non-streamed '$got'"
} || fail "chat streamed: $streamed"

code=$(post /v1/embeddings embed)
if [ "$code" = 200 ]; then
    "$glimpse" embed --text "$text" --image "$image" --json 2>/dev/null > "$tmp/embed_cli.json"
    diff=$(python3 - "$tmp/embed.out" "$tmp/embed_cli.json" <<'PY'
import json, sys
served = json.load(open(sys.argv[1]))
cli = json.load(open(sys.argv[2]))
want = cli["text_embeds"] + cli["image_embeds"]
got = [d["embedding"] for d in sorted(served["data"], key=lambda d: d["index"])]
assert served["object"] == "list" and len(got) == len(want), (len(got), len(want))
print(f'{max(abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w) if len(g) == len(w)):.2e} {len(got)}x{len(got[0])}')
PY
    ) && python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 1e-4 else 1)" "${diff%% *}" \
        && pass "embeddings (text + image, float) ${diff#* }, max |diff| vs glimpse embed ${diff%% *}" \
        || fail "embeddings differ from glimpse embed: ${diff:-unreadable}"
else
    fail "embeddings: HTTP $code: $(cat "$tmp/embed.out")"
fi

code=$(curl -s -o "$tmp/models.out" -w '%{http_code}' "$base/v1/models")
ids=$(get_field x '" ".join(m["id"] for m in d["data"])' "$tmp/models.out" 2>/dev/null || true)
[ "$code" = 200 ] && [[ "$ids" == *clip* ]] && [[ "$ids" == *blip* ]] && pass "models: $ids" \
    || fail "models: HTTP $code, ids '$ids'"

echo "== bad requests"
expect() { # STATUS NAME (a body in $tmp/NAME.json) [ROUTE]
    local code msg
    code=$(post "${3:-/v1/chat/completions}" "$2")
    msg=$(get_field x 'd["error"]["message"]' "$tmp/$2.out" 2>/dev/null || true)
    if [ "$code" = "$1" ] && [ -n "$msg" ]; then
        pass "$2 -> $code: $msg"
    else
        fail "$2: expected $1 with error.message, got $code: $(head -c 300 "$tmp/$2.out")"
    fi
}
expect 400 truncated
expect 404 unknown
expect 422 text_url
expect 422 not_png
expect 422 no_image
code=$(curl -s -o "$tmp/ctype.out" -w '%{http_code}' "$base/v1/embeddings" --data-binary "@$tmp/embed.json")
msg=$(get_field x 'd["error"]["message"]' "$tmp/ctype.out" 2>/dev/null || true)
[ "$code" = 415 ] && [ -n "$msg" ] && pass "no content type -> 415: $msg" || fail "no content type: $code $(head -c 300 "$tmp/ctype.out")"

if grep -qi 'panicked' "$tmp/server.log"; then
    fail "the server panicked:"; grep -i -A3 'panicked' "$tmp/server.log"
fi
if [ "$fails" -gt 0 ]; then
    echo "check_openai.sh: $fails check(s) failed"
    exit 1
fi
echo "check_openai.sh: all checks passed"
