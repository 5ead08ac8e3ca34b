// A stand-in for Zymbit's libzk_app_utils.so, for test/lib/hsm/zymkey.test.ts.
//
// It exports zkOpen/zkClose/zkLockDataB2B/zkUnlockDataB2B with the C
// signatures of zk_app_utils.h, so the bun:ffi binding in lib/hsm/zymkey.ts
// is exercised exactly as against the real library, and a few zkStub* hooks
// the test reads. Built by the test: g++ -shared -fPIC -O2.
//
// Behaviour, read from the environment at call time (the test sets it with
// libc setenv, since Bun's process.env does not reach getenv):
//   ZK_STUB_DEVICE_KEY  file holding this "device's" key (≥ 16 bytes); unset
//                       or unreadable: zkOpen fails, like an unbound device
//   ZK_STUB_OPEN_FAIL=1 zkOpen fails (no zkifc daemon / no device)
//   ZK_STUB_LOCK_FAIL=1 zkLockDataB2B fails
//   ZK_STUB_LOG         file each lock/unlock call appends one line to, with
//                       the use_shared_key argument it received
// and zkStubFailUnlocks(n): the next n zkUnlockDataB2B calls fail with rc -9
// whatever the data, as a transient daemon or I²C error would.
//
// "Locking" is a keyed XOR stream plus a 64-bit keyed MAC over nonce and
// ciphertext, checked before decrypting (as the Zymkey verifies its signature
// first): another device key or a flipped bit fails the unlock. Not
// cryptography; just enough structure for the binding's failure classes.
//
// Every output buffer is malloc'd with a large tail so glibc serves it with
// mmap (above the 32 MiB ceiling of its dynamic mmap threshold, so the
// threshold never moves, and untouched pages cost nothing): mallinfo2().hblks
// then counts the stub's buffers still allocated, which proves the caller
// freed them with libc free.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <sys/random.h>

typedef void* zkCTX;

namespace {

const uint8_t MAGIC[4] = {'Z', 'K', 'S', '1'};
const size_t NONCE = 8, MAC = 8, HEADER = sizeof(MAGIC) + NONCE;
const size_t MMAP_TAIL = (size_t)33 << 20;
const uint32_t CTX_MAGIC = 0x7a6b6378;

struct Ctx {
  uint32_t magic;
  uint8_t key[64];
  size_t key_len;
};

int live_contexts = 0;
int outputs = 0;
int failing_unlocks = 0;

bool env_on(const char* name) {
  const char* v = getenv(name);
  return v && strcmp(v, "1") == 0;
}

void log_call(const char* op, bool use_shared_key, int src_sz) {
  const char* path = getenv("ZK_STUB_LOG");
  if (!path) return;
  FILE* f = fopen(path, "a");
  if (!f) return;
  fprintf(f, "%s use_shared_key=%d src_sz=%d\n", op, use_shared_key ? 1 : 0, src_sz);
  fclose(f);
}

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// FNV-1a over the parts, finished with a 64-bit mixer.
uint64_t keyed_hash(const Ctx* c, uint8_t domain, const uint8_t* a, size_t an, const uint8_t* b, size_t bn) {
  uint64_t h = 0xcbf29ce484222325ULL ^ domain;
  auto eat = [&h](const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
  };
  eat(c->key, c->key_len);
  eat(a, an);
  eat(b, bn);
  return mix(h);
}

void xor_stream(const Ctx* c, uint8_t domain, const uint8_t* nonce, const uint8_t* in, uint8_t* out, size_t n) {
  uint64_t seed = keyed_hash(c, domain, nonce, NONCE, nullptr, 0);
  for (size_t i = 0; i < n; i++) {
    uint64_t block = mix(seed + i / 8);
    out[i] = in[i] ^ (uint8_t)(block >> (8 * (i % 8)));
  }
}

// One-way and shared keys are different keys: mix the flag into every hash.
uint8_t domain_of(bool use_shared_key) { return use_shared_key ? 'S' : 'O'; }

Ctx* ctx_of(zkCTX ctx) {
  Ctx* c = static_cast<Ctx*>(ctx);
  return c && c->magic == CTX_MAGIC ? c : nullptr;
}

uint8_t* alloc_output(size_t n) {
  uint8_t* p = static_cast<uint8_t*>(malloc(n + MMAP_TAIL));
  if (p) outputs++;
  return p;
}

}  // namespace

extern "C" {

int zkOpen(zkCTX* ctx) {
  if (!ctx || env_on("ZK_STUB_OPEN_FAIL")) return -1;
  const char* path = getenv("ZK_STUB_DEVICE_KEY");
  if (!path) return -2;
  FILE* f = fopen(path, "rb");
  if (!f) return -2;
  Ctx* c = static_cast<Ctx*>(calloc(1, sizeof(Ctx)));
  c->key_len = fread(c->key, 1, sizeof(c->key), f);
  fclose(f);
  if (c->key_len < 16) {
    free(c);
    return -3;
  }
  c->magic = CTX_MAGIC;
  live_contexts++;
  *ctx = c;
  return 0;
}

int zkClose(zkCTX ctx) {
  Ctx* c = ctx_of(ctx);
  if (!c) return -1;
  memset(c, 0, sizeof(*c));
  free(c);
  live_contexts--;
  return 0;
}

int zkLockDataB2B(zkCTX ctx, const uint8_t* src_pt, int src_pt_sz, uint8_t** dst_ct, int* dst_ct_sz,
                  bool use_shared_key) {
  log_call("lock", use_shared_key, src_pt_sz);
  Ctx* c = ctx_of(ctx);
  if (!c || !src_pt || src_pt_sz <= 0 || !dst_ct || !dst_ct_sz) return -1;
  if (env_on("ZK_STUB_LOCK_FAIL")) return -5;
  size_t n = (size_t)src_pt_sz, total = HEADER + n + MAC;
  uint8_t* out = alloc_output(total);
  if (!out) return -4;
  uint8_t d = domain_of(use_shared_key);
  memcpy(out, MAGIC, sizeof(MAGIC));
  if (getrandom(out + sizeof(MAGIC), NONCE, 0) != (ssize_t)NONCE) {
    free(out);
    return -6;
  }
  xor_stream(c, d, out + sizeof(MAGIC), src_pt, out + HEADER, n);
  uint64_t mac = keyed_hash(c, d ^ 0x80, out, HEADER, out + HEADER, n);
  memcpy(out + HEADER + n, &mac, MAC);
  *dst_ct = out;
  *dst_ct_sz = (int)total;
  return 0;
}

int zkUnlockDataB2B(zkCTX ctx, const uint8_t* src_ct, int src_ct_sz, uint8_t** dst_pt, int* dst_pt_sz,
                    bool use_shared_key) {
  log_call("unlock", use_shared_key, src_ct_sz);
  Ctx* c = ctx_of(ctx);
  if (!c || !src_ct || !dst_pt || !dst_pt_sz) return -1;
  if (failing_unlocks > 0) {
    failing_unlocks--;
    return -9;  // transient: the same call succeeds again later
  }
  if (src_ct_sz <= (int)(HEADER + MAC) || memcmp(src_ct, MAGIC, sizeof(MAGIC)) != 0) return -7;
  size_t n = (size_t)src_ct_sz - HEADER - MAC;
  uint8_t d = domain_of(use_shared_key);
  uint64_t mac = keyed_hash(c, d ^ 0x80, src_ct, HEADER, src_ct + HEADER, n), got;
  memcpy(&got, src_ct + HEADER + n, MAC);
  if (mac != got) return -8;  // signature check first, like the device
  uint8_t* out = alloc_output(n);
  if (!out) return -4;
  xor_stream(c, d, src_ct + sizeof(MAGIC), src_ct + HEADER, out, n);
  *dst_pt = out;
  *dst_pt_sz = (int)n;
  return 0;
}

// Test hooks.
void zkStubFailUnlocks(int n) { failing_unlocks = n; }
int zkStubLiveContexts(void) { return live_contexts; }
int zkStubOutputs(void) { return outputs; }
// glibc's count of live mmap'd chunks: the stub's unfreed outputs, plus any
// other large malloc of the process (compare against a baseline).
long zkStubMmappedChunks(void) { return (long)mallinfo2().hblks; }
}
