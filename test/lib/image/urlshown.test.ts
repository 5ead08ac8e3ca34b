/**
 * What zb shows of a URL (lib/image/urlshown.ts) and of the runtime's fetch
 * errors (httpbody.ts fetchReason): never a password, never the query.
 */
import { describe, expect, test } from "bun:test";
import { proxyHint } from "../../../lib/image/http.ts";
import { fetchReason } from "../../../lib/image/httpbody.ts";
import { displayUrl } from "../../../lib/image/urlshown.ts";

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

describe("displayUrl: no user:password@, no query", () => {
  test.each([
    { url: "https://u:pw@h/x.zbi?X-Amz-Signature=s#f", shown: "https://h/x.zbi?…" },
    { url: "http://h:8080/x.zbi", shown: "http://h:8080/x.zbi" },
    { url: "http://h/a@b.zbi", shown: "http://h/a@b.zbi" }, // an @ in the path is no password
    { url: "socks5://u:pw@h:1080", shown: "socks5://h:1080" },
    // URLs that do not parse: before, the first two were printed up to their first / or ?, password and all.
    { url: "http://u:pa/ss@127.0.0.1:1/x", shown: "http://127.0.0.1:1/x" },
    { url: "http://u:p?ss@127.0.0.1:1/x", shown: "http://127.0.0.1:1/x" },
    { url: "http://u:p#ss@127.0.0.1:1/x", shown: "http://127.0.0.1:1/x" },
    { url: "http://u:p@ss@127.0.0.1:99999/x?t=s", shown: "http://127.0.0.1:99999/x" },
    { url: "http://[::1/x?t=s", shown: "http://[::1/x" },
    // Parsed, but without an authority: the scheme "u", the path "pw@10.0.0.1:3128" (a proxy variable without http://).
    { url: "u:pw@10.0.0.1:3128", shown: "10.0.0.1:3128" },
    { url: "10.0.0.1:3128", shown: "10.0.0.1:3128" },
  ])("$url → $shown", ({ url, shown }) => {
    expect(displayUrl(url)).toBe(shown);
  });
});

describe("proxyHint names the proxy variables set, without their credentials", () => {
  test.each([
    { env: { http_proxy: "http://u:pw@10.0.0.1:3128" }, named: "http_proxy=http://10.0.0.1:3128/" },
    { env: { HTTPS_PROXY: "http://u:pa/ss@10.0.0.1:3128" }, named: "HTTPS_PROXY=http://10.0.0.1:3128" },
    { env: { ALL_PROXY: "u:pw@10.0.0.1:3128" }, named: "ALL_PROXY=10.0.0.1:3128" },
  ])("$named", ({ env, named }) => {
    expect(proxyHint(env)?.hint).toStartWith(`${named} is set: `);
    expect(proxyHint(env)?.hint).not.toContain("pw");
    expect(proxyHint(env)?.hint).not.toContain("pa/ss");
  });
});
