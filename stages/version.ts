/** The release version, printed by `zb version` and `fw_printenv -V`. */
export const VERSION = "0.1.0";
