#!/usr/bin/env bash
# Renders Glimpse report pages in headless Chromium (from Debian), saves a
# screenshot of each, and measures how long the browser takes to load each page.
#
#   bash tools/render_reports.sh OUT_DIR [PAGE.html ...]
#
# Without pages it renders docs/reports/**/*.html. It also writes a 10,000-update
# run (a BLIP-style log.jsonl made with awk: total, ITC, ITM and LM losses, learning
# rate, gradient norm and samples/s every update, validation every 500, a resume at
# 5,000) into OUT_DIR/long-run/, makes its page with `glimpse report` (GLIMPSE, default
# target/release/glimpse, else target/debug/glimpse) and renders it with the others. It installs Chromium with apt-get
# when it is missing (`apt-get update` first; through sudo when not root). For each
# page it writes OUT_DIR/<name>.png (1280 px wide, full height up to 6000 px) and a
# line of OUT_DIR/load_times.tsv: page, bytes, load time in ms.
#
# The load time is measured inside the browser: a wrapper page in a temporary
# directory loads the report in an iframe and records `performance.now()` when the
# iframe's load event fires (parsing, layout of the inline SVG and decoding of the
# embedded images included), relative to the moment the iframe was created. Each page
# is loaded three times in fresh browser processes; the table keeps the median.
set -euo pipefail

out=${1:?usage: bash tools/render_reports.sh OUT_DIR [PAGE.html ...]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ $# -gt 0 ]; then
    pages=("$@")
else
    mapfile -t pages < <(find docs/reports -name '*.html' | sort)
fi
glimpse=${GLIMPSE:-target/release/glimpse}
[ -x "$glimpse" ] || glimpse=target/debug/glimpse
if [ -x "$glimpse" ]; then
    long="$out/long-run"
    mkdir -p "$long"
    printf '[model]\nkind = "blip"\n[optim]\nmax_steps = 10000\n' > "$long/recipe.toml"
    awk 'BEGIN {
        for (s = 1; s <= 10000; s++) {
            itc = 3 / (1 + s / 800) + 0.08 * sin(s * 0.37); itm = 0.69 - 0.3 * s / 10000 + 0.03 * cos(s);
            lm = 6 / (1 + s / 300) + 0.5; lr = (s < 200 ? s / 200 : 0.5 * (1 + cos(3.14159265 * (s - 200) / 9800))) * 1e-4;
            printf "{\"step\":%d,\"epoch\":%d,\"loss\":%.6f,\"lr\":%.8g,\"grad_norm\":%.5f,\"samples_per_s\":%.3f,\"itc\":%.6f,\"itm\":%.6f,\"lm\":%.6f}\n",
                s, int(s / 700), itc + itm + lm, lr, 1 + 0.5 * sin(s * 0.011) + (s % 97 == 0 ? 3 : 0), 36 + sin(s * 0.05), itc, itm, lm;
            if (s % 500 == 0)
                printf "{\"step\":%d,\"validation\":{\"itc_loss\":%.5f,\"retrieval\":{\"r1_i2t\":%.4f,\"r5_i2t\":%.4f}}}\n", s, 3 / (1 + s / 800), 0.5 * s / 10000, 0.9 * s / 10000;
            if (s == 5000) printf "{\"step\":5000,\"resumed\":{\"epoch\":7,\"position\":4000}}\n";
        } }' > "$long/log.jsonl"
    "$glimpse" report --run "$long" >&2
    pages+=("$long/report.html")
else
    echo "no glimpse binary (build it, or set GLIMPSE): the 10,000-update page is not made" >&2
fi
[ ${#pages[@]} -gt 0 ] || { echo "no page to render" >&2; exit 1; }

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

flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --disable-extensions
       --no-first-run --disable-background-networking --disable-dev-shm-usage
       --allow-file-access-from-files)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The height of a page's content, from the browser, to size its screenshot.
page_height() {
    "$browser" "${flags[@]}" --window-size=1280,800 --virtual-time-budget=5000 \
        --run-all-compositor-stages-before-draw \
        --dump-dom "file://$tmp/height.html" 2>/dev/null |
        sed -n 's/.*<title>\([0-9]*\)<\/title>.*/\1/p'
}

load_ms() {
    # No --virtual-time-budget here: it would make performance.now() virtual time.
    # --dump-dom waits for the wrapper's load event, which follows the iframe's.
    "$browser" "${flags[@]}" --window-size=1280,800 \
        --dump-dom "file://$tmp/time.html" 2>/dev/null |
        sed -n 's/.*<title>\([0-9.]*\)<\/title>.*/\1/p'
}

printf 'page\tbytes\tload_ms\n' > "$out/load_times.tsv"
for page in "${pages[@]}"; do
    [ -f "$page" ] || { echo "$page: no such file" >&2; exit 1; }
    abs=$(cd "$(dirname "$page")" && pwd)/$(basename "$page")
    name=$(echo "${page#docs/reports/}" | sed "s#^$out/##; s/\.html\$//; s#^/##; s#/#-#g")
    cat > "$tmp/time.html" <<EOF
<!DOCTYPE html><html><head><title>pending</title></head><body><script>
const f = document.createElement('iframe');
f.style.width = '1280px'; f.style.height = '800px';
const t0 = performance.now();
f.onload = () => { document.title = (performance.now() - t0).toFixed(1); };
f.src = 'file://$abs';
document.body.appendChild(f);
</script></body></html>
EOF
    cat > "$tmp/height.html" <<EOF
<!DOCTYPE html><html><head><title>0</title></head><body style="margin:0"><script>
const f = document.createElement('iframe');
f.style.width = '1280px'; f.style.height = '800px';
f.onload = () => { document.title = String(f.contentDocument.documentElement.scrollHeight); };
f.src = 'file://$abs';
document.body.appendChild(f);
</script></body></html>
EOF
    times=()
    for _ in 1 2 3; do
        times+=("$(load_ms)")
    done
    median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
    height=$(page_height)
    height=${height:-2000}
    [ "$height" -gt 6000 ] && height=6000
    [ "$height" -lt 400 ] && height=400
    "$browser" "${flags[@]}" --window-size=1280,"$height" --virtual-time-budget=5000 \
        --screenshot="$out/$name.png" "file://$abs" 2>/dev/null
    bytes=$(stat -c %s "$page")
    printf '%s\t%s\t%s\n' "$page" "$bytes" "$median" >> "$out/load_times.tsv"
    echo "$page: $bytes bytes, load ${median} ms (runs: ${times[*]}), screenshot $out/$name.png (1280x$height)" >&2
done
column -t "$out/load_times.tsv" >&2
