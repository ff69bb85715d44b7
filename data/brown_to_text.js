#!/usr/bin/env node
// Turns the POS-tagged Brown corpus (Form C: `word/tag` tokens separated by spaces,
// one sentence per line, paragraphs separated by blank lines) into readable text.
//   node data/brown_to_text.js <raw dir> <text dir>     (data/fetch_brown.sh runs it)
// Every rule here is listed in data/README.md; keep the two in step.
'use strict';
const fs = require('fs');
const path = require('path');

// Tokens that attach to the word before them (no space before) ...
const CLOSING = new Set(['.', ',', ';', ':', '?', '!', ')', ']', "''"]);
const CLITIC = /^(n't|'s|'re|'ve|'ll|'d|'m)$/i;
// ... and tokens that attach to the word after them (no space after).
const OPENING = new Set(['(', '[', '``']);
const DOUBLED = new Set([';', '?', '!', ':']);

// The word is everything before the LAST slash: words such as 1-1/2 contain slashes.
function splitToken(token) {
  const at = token.lastIndexOf('/');
  if (at <= 0) return {word: token, tag: ''};
  return {word: token.slice(0, at), tag: token.slice(at + 1)};
}

// A line is a headline when at least half of its tokens carry the -hl suffix; the
// tagging is not perfectly consistent ("More/ap-hl for/in-hl nursing/vbg-hl homes/nns").
function isHeadline(tokens) {
  const marked = tokens.filter((t) => /-hl(-|$)/.test(t.tag)).length;
  return marked * 2 >= tokens.length;
}

// Joins words with spaces except around punctuation. A lone ' is ambiguous (opening
// or closing single quote); within a paragraph they alternate, starting with opening.
function detokenize(words) {
  let out = '';
  let glueNext = true;  // no space before the next word
  let singleOpen = false;
  let previous = '';
  for (const raw of words) {
    // The corpus doubles most sentence-ending ; ? ! (";/. ;/."), an artifact of its
    // sentence split: 2781 of 5566 semicolons and 2314 of 4692 question marks.
    if (DOUBLED.has(raw) && previous === raw) continue;
    // A sentence ending in an abbreviation gets its own period too ("Jr./np ./.").
    if (raw === '.' && previous.length > 1 && previous.endsWith('.')) continue;
    previous = raw;
    let word = raw;
    let opening = OPENING.has(raw);
    let closing = CLOSING.has(raw) || CLITIC.test(raw);
    if (raw === '``' || raw === "''") word = '"';
    if (raw === "'") {
      opening = !singleOpen;
      closing = singleOpen;
      singleOpen = !singleOpen;
    }
    if (!glueNext && !closing) out += ' ';
    out += word;
    glueNext = opening;
  }
  return out;
}

function upcaseFirst(words) {
  if (words.length && /^[a-z]/.test(words[0])) {
    words[0] = words[0][0].toUpperCase() + words[0].slice(1);
  }
}

function convert(raw) {
  const paragraphs = [];
  for (const block of raw.split(/\n[ \t]*\n/)) {
    let body = [];
    let afterHeadline = false;
    const flush = () => {
      if (body.length) paragraphs.push(detokenize(body));
      body = [];
    };
    for (const line of block.split('\n')) {
      const tokens = line.trim().split(/\s+/).filter(Boolean).map(splitToken);
      if (!tokens.length) continue;
      const words = tokens.map((t) => t.word);
      if (isHeadline(tokens)) {
        flush();
        paragraphs.push(detokenize(words));
        afterHeadline = true;
        continue;
      }
      // A run-in headline ("Matter of survival those watching ...") continues in
      // lower case; once the headline is its own paragraph the body needs a capital.
      if (afterHeadline && !body.length) upcaseFirst(words);
      afterHeadline = false;
      body.push(...words);
    }
    flush();
  }
  return paragraphs.join('\n\n') + '\n';
}

function main() {
  const [rawDir, textDir] = process.argv.slice(2);
  if (!rawDir || !textDir) {
    console.error('usage: node brown_to_text.js <raw dir> <text dir>');
    process.exit(2);
  }
  fs.mkdirSync(textDir, {recursive: true});
  for (const name of fs.readdirSync(rawDir).sort()) {
    const text = convert(fs.readFileSync(path.join(rawDir, name), 'latin1'));
    fs.writeFileSync(path.join(textDir, name + '.txt'), text);
  }
}

main();
