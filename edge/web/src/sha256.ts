// SHA-256 (FIPS 180-4) fed piece by piece, for files too large to hold in memory at once.
// `crypto.subtle.digest` only takes the whole input as one buffer: for a 1 GB Apple Health export that is
// 1 GB read into the tab, which Chromium may refuse and which blocks nothing less than the whole digest.
// Here the file is read a slice at a time (each read is awaited, so the page stays responsive between
// slices) and only the running state is kept. Chunks sent to the server, small enough to hold, are hashed
// with `crypto.subtle` (`sha256Hex`).

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** A running SHA-256: `update` with each piece in order, then `hex` once. */
export class Sha256 {
  private readonly state = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  private readonly w = new Uint32Array(64);
  /** Bytes of an incomplete 64-byte block, waiting for the next piece. */
  private readonly pending = new Uint8Array(64);
  private pendingLength = 0;
  private length = 0;
  private finished = false;

  update(data: Uint8Array): this {
    if (this.finished) {
      throw new Error("the digest was already taken");
    }
    this.length += data.length;
    let offset = 0;
    if (this.pendingLength > 0) {
      const taken = Math.min(64 - this.pendingLength, data.length);
      this.pending.set(data.subarray(0, taken), this.pendingLength);
      this.pendingLength += taken;
      offset = taken;
      if (this.pendingLength < 64) {
        return this;
      }
      this.blocks(this.pending, 0, 64);
      this.pendingLength = 0;
    }
    const whole = offset + Math.floor((data.length - offset) / 64) * 64;
    this.blocks(data, offset, whole);
    this.pending.set(data.subarray(whole));
    this.pendingLength = data.length - whole;
    return this;
  }

  /** The digest as 64 lowercase hex digits. */
  hex(): string {
    const bits = this.length * 8;
    const tail = new Uint8Array(this.pendingLength < 56 ? 64 : 128);
    tail.set(this.pending.subarray(0, this.pendingLength));
    tail[this.pendingLength] = 0x80;
    const view = new DataView(tail.buffer);
    view.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(tail.length - 4, bits >>> 0);
    this.blocks(tail, 0, tail.length);
    this.finished = true;
    return Array.from(this.state, (word) => word.toString(16).padStart(8, "0")).join("");
  }

  /** Compresses the 64-byte blocks of `data[start, end)`. */
  private blocks(data: Uint8Array, start: number, end: number): void {
    const w = this.w;
    const s = this.state;
    for (let at = start; at < end; at += 64) {
      for (let i = 0; i < 16; i++) {
        const j = at + i * 4;
        w[i] = ((data[j]! << 24) | (data[j + 1]! << 16) | (data[j + 2]! << 8) | data[j + 3]!) >>> 0;
      }
      for (let i = 16; i < 64; i++) {
        const a = w[i - 15]!;
        const b = w[i - 2]!;
        const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
        const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
        w[i] = (w[i - 16]! + s0 + w[i - 7]! + s1) >>> 0;
      }
      let a = s[0]!;
      let b = s[1]!;
      let c = s[2]!;
      let d = s[3]!;
      let e = s[4]!;
      let f = s[5]!;
      let g = s[6]!;
      let h = s[7]!;
      for (let i = 0; i < 64; i++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const ch = (e & f) ^ (~e & g);
        const t1 = (h + S1 + ch + K[i]! + w[i]!) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const maj = (a & b) ^ (a & c) ^ (b & c);
        const t2 = (S0 + maj) | 0;
        h = g;
        g = f;
        f = e;
        e = (d + t1) | 0;
        d = c;
        c = b;
        b = a;
        a = (t1 + t2) | 0;
      }
      s[0] = s[0]! + a;
      s[1] = s[1]! + b;
      s[2] = s[2]! + c;
      s[3] = s[3]! + d;
      s[4] = s[4]! + e;
      s[5] = s[5]! + f;
      s[6] = s[6]! + g;
      s[7] = s[7]! + h;
    }
  }
}

/** The SHA-256 of `data` (held whole: a chunk), as 64 lowercase hex digits. */
export async function sha256Hex(data: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** About 10 ms of hashing on a laptop (~100 MB/s): short enough that the page never stalls visibly. */
const SLICE_BYTES = 1024 * 1024;

/** The SHA-256 of `file`, read `sliceBytes` at a time; `progress` hears the bytes hashed so far. */
export async function fileSha256(
  file: Blob,
  progress: (hashed: number) => void = () => {},
  sliceBytes = SLICE_BYTES,
): Promise<string> {
  const hash = new Sha256();
  for (let at = 0; at < file.size; at += sliceBytes) {
    const slice = new Uint8Array(await file.slice(at, at + sliceBytes).arrayBuffer());
    hash.update(slice);
    progress(Math.min(at + sliceBytes, file.size));
  }
  return hash.hex();
}
