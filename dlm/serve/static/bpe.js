// Byte-level BPE in JavaScript: the same ids as dlm's BPE tokenizer (Hugging Face tokenizers' BPE model behind
// the ByteLevel pre-tokenizer, GPT-2's split pattern, no prefix space), so the ONNX page encodes a prompt and
// spells tokens without a server. Loaded by the page as a script (window.ByteLevelBPE) and by the tests in Node.
(function (root) {
  "use strict";

  // GPT-2's table: a printable byte stands for itself, every other byte for the character 256 + n, so each
  // token is a string of visible characters (a space is "Ġ").
  function byteTable() {
    const kept = [];
    for (let b = 33; b <= 126; b++) kept.push(b);
    for (let b = 161; b <= 172; b++) kept.push(b);
    for (let b = 174; b <= 255; b++) kept.push(b);
    const toChar = new Array(256), toByte = new Map();
    let moved = 0;
    for (let b = 0; b < 256; b++) {
      toChar[b] = String.fromCodePoint(kept.includes(b) ? b : 256 + moved++);
      toByte.set(toChar[b], b);
    }
    return {toChar, toByte};
  }

  // Contractions, letters, digits, other symbols (each with one leading space), then runs of whitespace.
  const PIECES = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
  // dlm encodes line by line, each line with its break (Python's str.splitlines(keepends=True)): " \n" before a
  // word is then one piece, not two.
  const LINES = /[^\n\r\v\f\x1c-\x1e\x85\u2028\u2029]*(?:\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029])?/gu;

  class ByteLevelBPE {
    // vocab: each id's token string; merges: [left, right] pairs, the first merged first.
    constructor(vocab, merges) {
      this.vocab = vocab;
      this.ids = new Map(vocab.map((token, id) => [token, id]));
      this.ranks = new Map(merges.map(([left, right], rank) => [left + " " + right, rank]));
      this.table = byteTable();
      this.cache = new Map();
    }

    encode(text) {
      const utf8 = new TextEncoder(), ids = [];
      const pieces = (text.match(LINES) || []).flatMap((line) => line.match(PIECES) || []);
      for (const piece of pieces) {
        let tokens = this.cache.get(piece);
        if (tokens === undefined) {
          const symbols = Array.from(utf8.encode(piece), (b) => this.table.toChar[b]);
          tokens = this.merge(symbols).map((symbol) => {
            const id = this.ids.get(symbol);
            if (id === undefined) throw new Error(`the token ${JSON.stringify(symbol)} is not in the vocabulary`);
            return id;
          });
          this.cache.set(piece, tokens);
        }
        ids.push(...tokens);
      }
      return ids;
    }

    // Merge the lowest-ranked adjacent pair, leftmost first, until no pair has a rank (as the BPE model does).
    merge(symbols) {
      while (symbols.length > 1) {
        let best = -1, bestRank = Infinity;
        for (let i = 0; i + 1 < symbols.length; i++) {
          const rank = this.ranks.get(symbols[i] + " " + symbols[i + 1]);
          if (rank !== undefined && rank < bestRank) { bestRank = rank; best = i; }
        }
        if (best < 0) break;
        symbols.splice(best, 2, symbols[best] + symbols[best + 1]);
      }
      return symbols;
    }

    bytes(ids) {
      const out = [];
      for (const id of ids) for (const ch of this.vocab[id]) out.push(this.table.toByte.get(ch));
      return Uint8Array.from(out);
    }

    // Invalid UTF-8 (a character cut between tokens) becomes U+FFFD, as the Python decoder does.
    decode(ids) { return new TextDecoder("utf-8").decode(this.bytes(ids)); }
  }

  if (typeof module === "object" && module.exports) module.exports = {ByteLevelBPE};
  else root.ByteLevelBPE = ByteLevelBPE;
})(typeof self !== "undefined" ? self : this);
