// A dependency-light .npy reader (format versions 1-3, little-endian, C order, no pickles).
// Shared by the Node.js and browser verifiers; mirrors toolchain.package.format.load_array, which
// refuses object arrays and any file whose data does not match its header.

const DTYPES = {
  "<f2": ["float16", 2], "<f4": ["float32", 4], "<f8": ["float64", 8],
  "|i1": ["int8", 1], "<i2": ["int16", 2], "<i4": ["int32", 4], "<i8": ["int64", 8],
  "|u1": ["uint8", 1], "<u2": ["uint16", 2], "<u4": ["uint32", 4], "<u8": ["uint64", 8],
  "|b1": ["bool", 1],
};

const ARRAYS = {
  float16: Uint16Array, float32: Float32Array, float64: Float64Array,
  int8: Int8Array, int16: Int16Array, int32: Int32Array, int64: BigInt64Array,
  uint8: Uint8Array, uint16: Uint16Array, uint32: Uint32Array, uint64: BigUint64Array, bool: Uint8Array,
};

/** The typed-array class that holds elements of `dtype` (float16 as raw Uint16 bits, bool as bytes). */
export function arrayClass(dtype) {
  const cls = ARRAYS[dtype];
  if (!cls) throw new Error(`unsupported dtype ${dtype}`);
  return cls;
}

/** Parse `.npy` bytes into {dtype, shape, data}; throws naming `name` on anything malformed. */
export function parseNpy(bytes, name) {
  const fail = (why) => { throw new Error(`${name}: not a readable .npy array: ${why}`); };
  const magic = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59];
  if (bytes.length < 10 || magic.some((b, i) => bytes[i] !== b)) fail("bad magic");
  const major = bytes[6];
  if (major < 1 || major > 3) fail(`format version ${major} is not supported`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  if (start + headerLen > bytes.length) fail("header runs past the end of the file");
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(bytes.subarray(start, start + headerLen));
  const descr = /'descr'\s*:\s*'([^']*)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shapeText = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeText) fail(`malformed header ${JSON.stringify(header.slice(0, 120))}`);
  const known = DTYPES[descr[1]];
  if (!known) fail(`dtype ${descr[1]} is not supported (object, big-endian and structured arrays are refused)`);
  if (fortran[1] === "True") fail("Fortran-order arrays are not supported");
  const shape = shapeText[1].split(",").map((s) => s.trim()).filter((s) => s.length > 0).map((s) => {
    if (!/^\d+$/.test(s)) fail(`shape entry ${s} is not a non-negative integer`);
    return Number(s);
  });
  const [dtype, itemsize] = known;
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  // NOTE: checked before any allocation, so a header claiming 256 TiB costs nothing.
  if (!Number.isSafeInteger(count * itemsize) || offset + count * itemsize !== bytes.length) {
    fail(`header says ${count} element(s) of ${itemsize} byte(s), the file holds ${bytes.length - offset} data byte(s)`);
  }
  // NOTE: slice() copies into a fresh, aligned buffer; typed arrays need offsets aligned to the item size.
  const buffer = bytes.slice(offset, offset + count * itemsize).buffer;
  return { dtype, shape, data: new (arrayClass(dtype))(buffer) };
}

/** IEEE half-precision bits to a double. */
export function halfToNumber(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Element `i` of an array as a double, the way numpy's astype(float64) reads it. */
export function numberAt(array, i) {
  const v = array.data[i];
  // NOTE: a runtime may hand float16 back as raw Uint16 bits or, where the platform has one, a Float16Array.
  if (array.dtype === "float16" && array.data instanceof Uint16Array) return halfToNumber(v);
  return Number(v);
}
