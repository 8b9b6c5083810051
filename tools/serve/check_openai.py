#!/usr/bin/env python3
"""Checks a running `glimpse serve` with the official `openai` Python client, against
the `glimpse` CLI on the same images.

    tools/.venv/bin/python tools/serve/check_openai.py URL [--image F ...] [--question Q]

URL is the server's root (http://127.0.0.1:PORT); the client talks to URL/v1 with the
key in GLIMPSE_API_KEY (any text when the server has no key). `openai` comes from
`bash tools/setup_venv.sh` (or `tools/.venv/bin/pip install openai`).

For each image (default: examples/synth/pink-diamond-and-cyan-star.png,
examples/synth/blue-circle.png, examples/images/rocket.jpg), sent as a `data:` URL:
- chat completions with every model that can answer (`ask`): the answer equals
  `glimpse ask --model DIR --image F --question Q --json` (`answer`), and the streamed
  deltas, put together, equal the non-streamed answer; Q is --question, else the first
  question of the image's .json record beside it, else "what is in the picture?";
- chat completions with every model that can caption, with the image and no text: the
  answer equals `glimpse caption --model DIR --image F --json` (`captions[0]`), streamed
  and not; and with a stop string that spans two words of that caption, both end
  before it;
- streamed answers ask for `include_usage`; their usage equals the non-streamed one;
- embeddings with every model that can embed, of two texts and the image in one
  request: the client's default (base64, which it decodes), the raw base64 (decoded
  here as little-endian f32) and `encoding_format="float"` all equal
  `glimpse embed --model DIR --text T --image F --json` (`text_embeds`, `image_embeds`)
  within 1e-4;
and once: models.list has ids with `clip` and with `blip`; 4 chat requests per image
and answering model sent at once get the answers they get one at a time.

A server model id maps to its model directory with --model-dir ID=DIR (the bundled
models are known); models without one are skipped with a note. The CLI is GLIMPSE,
else target/release/glimpse, else target/debug/glimpse (the first that has `serve`).
Prints one line per check and a summary; exits 1 on any mismatch.
"""

import argparse
import base64
import concurrent.futures
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = {
    "clip-synth": "models/clip-synth",
    "blip-synth-caption": "models/blip-synth/caption",
    "blip-synth-retrieval": "models/blip-synth/retrieval",
    "blip-synth-vqa": "models/blip-synth/vqa",
}
DEFAULT_IMAGES = [
    "examples/synth/pink-diamond-and-cyan-star.png",
    "examples/synth/blue-circle.png",
    "examples/images/rocket.jpg",
]
TEXTS = ["a pink diamond and a cyan star", "a photo of a rocket"]
TOL = 1e-4


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def ok(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print(f"ok   {what}")
        else:
            self.failed.append(what)
            print(f"FAIL {what}{': ' + detail if detail else ''}")
        return cond


def glimpse_bin():
    env = os.environ.get("GLIMPSE")
    if env:
        return env
    for c in ("target/release/glimpse", "target/debug/glimpse"):
        p = ROOT / c
        if p.exists() and subprocess.run([p, "serve", "--help"], capture_output=True).returncode == 0:
            return str(p)
    sys.exit("no glimpse binary with `serve`: build it (cargo build) or set GLIMPSE")


def cli(args):
    """`glimpse ARGS --json`, parsed."""
    out = subprocess.run([GLIMPSE, *args, "--json"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"glimpse {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def data_url(path):
    ext = path.suffix.lower().lstrip(".")
    mime = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "gif": "gif"}.get(ext, ext)
    return f"data:image/{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def question_for(path, given):
    if given:
        return given
    record = path.with_suffix(".json")
    if record.exists():
        qa = json.loads(record.read_text()).get("qa") or []
        if qa:
            return qa[0]["question"]
    return "what is in the picture?"


def chat_messages(url, text):
    content = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def chat_both(client, model, messages, **kw):
    """The non-streamed answer, its model, the streamed deltas put together, their
    count, the streamed finish reason, and whether the streamed usage (asked with
    include_usage) equals the non-streamed one."""
    full = client.chat.completions.create(model=model, messages=messages, **kw)
    got = full.choices[0].message.content
    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(model=model, messages=messages, stream=True,
                                            stream_options={"include_usage": True}, **kw)
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    same_usage = usage is not None and usage.completion_tokens == full.usage.completion_tokens
    return got, full.model, "".join(pieces), len(pieces), finish, same_usage


def max_diff(a, b):
    if len(a) != len(b):
        return float("inf")
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="the server's root, e.g. http://127.0.0.1:18101")
    ap.add_argument("--image", action="append", type=Path, help="an image file (repeatable)")
    ap.add_argument("--question", help="the question for every image")
    ap.add_argument("--model-dir", action="append", default=[], metavar="ID=DIR",
                    help="the model directory of a server model id, for the CLI")
    args = ap.parse_args()
    dirs = dict(BUNDLED)
    for m in args.model_dir:
        k, _, v = m.partition("=")
        dirs[k] = v
    images = [p if p.is_absolute() else (Path.cwd() / p) for p in (args.image or [])]
    images = images or [ROOT / p for p in DEFAULT_IMAGES]

    client = openai.OpenAI(base_url=args.url.rstrip("/") + "/v1",
                           api_key=os.environ.get("GLIMPSE_API_KEY") or "no-key", max_retries=0)
    c = Checks()

    # (c) the models
    models = client.models.list().data
    ids = [m.id for m in models]
    c.ok(any("clip" in i for i in ids) and any("blip" in i for i in ids),
         f"models.list: {', '.join(ids)}", "expected ids with `clip` and with `blip`")
    caps = {m.id: set(getattr(m, "capabilities", None) or (m.model_extra or {}).get("capabilities", []))
            for m in models}
    known = [i for i in ids if i in dirs]
    for i in ids:
        if i not in dirs:
            print(f"note {i}: no --model-dir {i}=DIR, not compared with the CLI")
    askers = [i for i in known if "ask" in caps[i]]
    captioners = [i for i in known if "caption" in caps[i]]
    embedders = [i for i in known if "embed" in caps[i]]
    c.ok(askers and captioners and embedders,
         f"models to compare: ask {askers}, caption {captioners}, embed {embedders}",
         "expected at least one of each")

    for path in images:
        url = data_url(path)
        name = path.name
        q = question_for(path, args.question)
        # (a) chat completions against `glimpse ask` and `glimpse caption`
        for m in askers:
            want = cli(["ask", "--model", dirs[m], "--image", str(path), "--question", q])["answer"]
            got, served_by, streamed, n, finish, same_usage = chat_both(client, m, chat_messages(url, q))
            c.ok(got == want and served_by == m,
                 f"{name}: chat {m} {q!r} -> {got!r} = glimpse ask", f"CLI {want!r}, model {served_by!r}")
            c.ok(streamed == got and finish in ("stop", "length") and same_usage,
                 f"{name}: chat {m} streamed {n} deltas -> {streamed!r} ({finish}, usage)",
                 f"non-streamed {got!r}, same usage {same_usage}")
        for m in captioners:
            want = cli(["caption", "--model", dirs[m], "--image", str(path)])["captions"][0]
            got, served_by, streamed, n, finish, same_usage = chat_both(client, m, chat_messages(url, None))
            c.ok(got == want and served_by == m,
                 f"{name}: chat {m} (image only) -> {got!r} = glimpse caption", f"CLI {want!r}")
            c.ok(streamed == got and finish in ("stop", "length") and same_usage,
                 f"{name}: chat {m} streamed {n} deltas -> {streamed!r} ({finish}, usage)",
                 f"non-streamed {got!r}, same usage {same_usage}")
            # A stop string across two streamed pieces (the end of one word, a space,
            # the start of the next): both answers end before it, streamed or not.
            words = want.split(" ")
            if len(words) >= 3 and words[1] and words[2]:
                stop = words[1][-1] + " " + words[2][0]
                cut = want[: want.find(stop)]
                got, _, streamed, n, finish, _ = chat_both(client, m, chat_messages(url, None), stop=[stop])
                c.ok(got == cut and streamed == cut and finish == "stop",
                     f"{name}: chat {m} stop={stop!r} -> {got!r}, streamed {streamed!r} ({finish})",
                     f"expected {cut!r} both ways")
        # (b) embeddings against `glimpse embed`
        for m in embedders:
            ref = cli(["embed", "--model", dirs[m], "--text", TEXTS[0], "--text", TEXTS[1],
                       "--image", str(path)])
            want = ref["text_embeds"] + ref["image_embeds"]
            inputs = TEXTS + [url]
            default = client.embeddings.create(model=m, input=inputs)
            got = [list(map(float, d.embedding)) for d in sorted(default.data, key=lambda d: d.index)]
            diff = max(max_diff(g, w) for g, w in zip(got, want)) if len(got) == len(want) else float("inf")
            c.ok(diff <= TOL and default.model == m,
                 f"{name}: embeddings {m} (client default, base64) {len(got)}x{len(got[0]) if got else 0}, "
                 f"max |diff| vs glimpse embed {diff:.2e}", f"tolerance {TOL}")
            raw = client.embeddings.with_raw_response.create(model=m, input=inputs, encoding_format="base64")
            body = json.loads(raw.text)
            decoded = []
            for d in sorted(body["data"], key=lambda d: d["index"]):
                b = base64.b64decode(d["embedding"], validate=True)
                decoded.append(list(struct.unpack(f"<{len(b) // 4}f", b)) if len(b) % 4 == 0 else [])
            diff = max(max_diff(g, w) for g, w in zip(decoded, want)) if len(decoded) == len(want) else float("inf")
            c.ok(diff <= TOL, f"{name}: embeddings {m} raw base64 decodes as little-endian f32, "
                 f"max |diff| {diff:.2e}", f"tolerance {TOL}")
            floats = client.embeddings.create(model=m, input=inputs, encoding_format="float")
            got = [d.embedding for d in sorted(floats.data, key=lambda d: d.index)]
            diff = max(max_diff(g, w) for g, w in zip(got, want)) if len(got) == len(want) else float("inf")
            c.ok(diff <= TOL, f"{name}: embeddings {m} (float) max |diff| {diff:.2e}", f"tolerance {TOL}")

    # Requests at the same time batch together in the server's workers: each must still
    # get its own answer (the ones above, one at a time).
    jobs = [(m, path, question_for(path, args.question)) for path in images for m in askers] * 4
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
        answers = list(ex.map(lambda j: client.chat.completions.create(
            model=j[0], messages=chat_messages(data_url(j[1]), j[2])).choices[0].message.content, jobs))
    alone = {(m, p): client.chat.completions.create(model=m, messages=chat_messages(data_url(p), q))
             .choices[0].message.content for m, p, q in set(jobs)}
    wrong = [(p.name, a) for (m, p, q), a in zip(jobs, answers) if a != alone[(m, p)]]
    c.ok(jobs and not wrong, f"{len(jobs)} chat requests at once: each answer equals its own, one at a time",
         f"{len(wrong)} differ: {wrong[:3]}")

    print(f"check_openai: {c.passed} passed, {len(c.failed)} failed (openai {openai.__version__}, {args.url})")
    for f in c.failed:
        print(f"  failed: {f}")
    return 1 if c.failed else 0


GLIMPSE = glimpse_bin()

if __name__ == "__main__":
    try:
        sys.exit(main())
    except openai.APIStatusError as e:
        print(f"FAIL the server answered {e.status_code}: {e.response.text[:500]}")
        sys.exit(1)
    except (openai.APIError, RuntimeError) as e:
        print(f"FAIL {type(e).__name__}: {e}")
        sys.exit(1)
