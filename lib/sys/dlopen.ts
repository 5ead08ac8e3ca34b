/**
 * Shared libraries by bare name, from the system's library directories only.
 *
 * Bun's `dlopen("libx.so")` asks the dynamic loader first and, when the
 * loader does not find the name, tries it again as a path relative to the
 * current directory (measured with Bun 1.4: a planted `libzk_app_utils.so`
 * in the working directory was loaded, its constructor ran). zb runs as root,
 * often from a folder someone else can write (a download folder, /tmp), so a
 * bare name must never reach Bun's dlopen: it is resolved here against the
 * directories the Debian loader searches (ld.so(8): the multiarch folders,
 * then /lib and /usr/lib), and only an absolute path is opened.
 */
import { existsSync } from "node:fs";

/** Debian's multiarch tuple for the runtime's architecture (the folders under /lib and /usr/lib). */
const MULTIARCH: Record<string, string> = { x64: "x86_64-linux-gnu", arm64: "aarch64-linux-gnu", arm: "arm-linux-gnueabihf" };

/** The folders searched, in order. */
export function libraryDirs(arch: string = process.arch): string[] {
  const m = MULTIARCH[arch];
  return [...(m ? [`/lib/${m}`, `/usr/lib/${m}`] : []), "/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib"];
}

/**
 * An absolute path for a library: a path (containing "/") is made absolute
 * as given; a bare name is looked up in {@link libraryDirs}, never in the
 * current directory.
 * @returns null when a bare name is in none of them
 */
export function systemLibrary(name: string, exists: (path: string) => boolean = existsSync, dirs: readonly string[] = libraryDirs()): string | null {
  if (name.includes("/")) return name.startsWith("/") ? name : `${process.cwd()}/${name}`;
  for (const dir of dirs) {
    const path = `${dir}/${name}`;
    if (exists(path)) return path;
  }
  return null;
}
