/**
 * Where an image comes from: a file, stdin, or an HTTP(S) URL. Files and
 * URLs can start at an offset (a file seeks, HTTP asks for `Range`), which
 * is how an interrupted install resumes without reading the image again.
 */
import { createReadStream, statSync } from "node:fs";
import { ZbError } from "../errors.ts";

export interface ImageSource {
  readonly name: string;
  /** Can `open` start at an offset other than 0? */
  readonly seekable: boolean;
  /** The image's bytes from `offset` on. @throws {ZbError} IO */
  open(offset: number): Promise<AsyncIterable<Uint8Array>>;
}

/** Read size per request: large reads keep the per-read overhead out of the hashing rate. */
const READ_SIZE = 1 << 20;

export function sourceFor(spec: string): ImageSource {
  if (spec === "-") return stdinSource();
  if (/^https?:\/\//.test(spec)) return httpSource(spec);
  return fileSource(spec);
}

export function fileSource(path: string): ImageSource {
  return {
    name: path,
    seekable: true,
    async open(offset) {
      try {
        if (!statSync(path).isFile() && offset > 0) throw new Error("not a regular file");
      } catch (e) {
        throw new ZbError("IO", `cannot read image ${path}: ${(e as { code?: string }).code === "ENOENT" ? "no such file" : (e as Error).message}`);
      }
      return createReadStream(path, { start: offset, highWaterMark: READ_SIZE });
    },
  };
}

export function stdinSource(): ImageSource {
  let used = false;
  return {
    name: "stdin",
    seekable: false,
    async open(offset) {
      if (offset !== 0 || used) throw new ZbError("IO", "cannot read the image from stdin twice or from an offset");
      used = true;
      return process.stdin;
    },
  };
}

export function httpSource(url: string): ImageSource {
  return {
    name: url,
    seekable: true,
    async open(offset) {
      let res: Response;
      try {
        res = await fetch(url, { headers: offset > 0 ? { Range: `bytes=${offset}-` } : {} });
      } catch (e) {
        throw new ZbError("IO", `cannot download ${url}: ${(e as Error).message}`);
      }
      if (offset > 0 && res.status !== 206) {
        throw new ZbError("IO", `cannot resume ${url} at byte ${offset}: the server answered ${res.status} instead of 206 Partial Content`);
      }
      if (offset === 0 && res.status !== 200) throw new ZbError("IO", `cannot download ${url}: HTTP ${res.status}`);
      if (!res.body) throw new ZbError("IO", `cannot download ${url}: empty response`);
      return res.body as unknown as AsyncIterable<Uint8Array>;
    },
  };
}
