/**
 * What zb shows of a URL (lib/image/urlshown.ts) and of the runtime's fetch
 * errors (httpbody.ts fetchReason): never a password, never the query.
 */
import { describe, expect, test } from "bun:test";
import { fetchReason } from "../../../lib/image/httpbody.ts";

/** A fetch error as the runtime makes it: a code and its text. */
const fetchError = (code: string, message: string) => Object.assign(new TypeError(message), { code });
const ADVICE = ". For more information, pass `verbose: true` in the second argument to fetch()";

describe("fetchReason: the runtime's fetch error in words, without the URL's secrets", () => {
  test.each([
    { name: "a code it knows, whose text names the URL", e: fetchError("InvalidContentLength", `InvalidContentLength fetching "http://h/x.zbi?X-Amz-Signature=SECRET"${ADVICE}`), want: "the server's Content-Length is not a valid length" },
    { name: "Malformed_HTTP_Response", e: fetchError("Malformed_HTTP_Response", `Malformed_HTTP_Response fetching "http://h/x.zbi?t=SECRET"${ADVICE}`), want: "the server's answer is not valid HTTP" },
    { name: "InvalidHTTPResponse", e: fetchError("InvalidHTTPResponse", `InvalidHTTPResponse fetching "http://h/x.zbi?t=SECRET"${ADVICE}`), want: "the server's answer is not valid HTTP" },
    { name: "ZlibError", e: fetchError("ZlibError", `ZlibError fetching "http://h/x.zbi?t=SECRET"${ADVICE}`), want: "the server's gzip (or deflate) body is corrupt" },
    { name: "BrotliDecompressionError", e: fetchError("BrotliDecompressionError", `BrotliDecompressionError fetching "http://h/x.zbi?t=SECRET"${ADVICE}`), want: "the server's br (Brotli) body is corrupt" },
    { name: "ZstdDecompressionError", e: fetchError("ZstdDecompressionError", `ZstdDecompressionError fetching "http://h/x.zbi?t=SECRET"${ADVICE}`), want: "the server's zstd body is corrupt" },
    { name: "a code it does not know: ` fetching \"URL\"` dropped", e: fetchError("SomeNewError", `SomeNewError fetching "https://u:SECRET@h/x.zbi?t=SECRET"${ADVICE}`), want: "SomeNewError" },
    { name: "a code it does not know, a URL elsewhere in its text: shown without its secrets", e: fetchError("Other", "cannot reach https://u:SECRET@h:8443/x.zbi?t=SECRET#f now"), want: "cannot reach https://h:8443/x.zbi?… now" },
    { name: "an errno it knows", e: fetchError("ECONNRESET", `ECONNRESET: The socket connection was closed unexpectedly${ADVICE}`), want: "the connection was reset" },
  ])("$name", ({ e, want }) => {
    expect(fetchReason(e)).toBe(want);
  });
});
