// BLT's hash n-gram embedding ids (notes blt_megabyte.md §1.2), exactly as the released code
// (facebookresearch/blt `byte_group_hash_function` in bytelatent/model/blt.py) computes them, so that
// the released hash-embedding tables are read at the right rows.
//
// For every position i of a row of ids x (BLT ids: byte + 4, BOS = 1, ...), n-gram size n and hash
// function f with prime a_f:
//
//   w_i  = (x[i−n+1], ..., x[i])          the n ids ending at i; ids before the row start are 0
//   h_i  = Σ_{j=0}^{n−1} w_i[j] · a_f^j   in 64-bit two's complement, wrapping modulo 2^64
//   id_i = h_i mod V                      the floor (non-negative) remainder, as torch.remainder
//
// Paper vs code (notes §1.10, rows 1–3; we follow the code because the weights expect it):
//   * the OLDEST id of the window gets a^0 and the current one a^{n−1} (the paper writes the reverse);
//   * the first n−1 positions are not skipped: their windows are left-padded with zeros (id 0, which
//     is also BOE) and hashed like any other;
//   * the embeddings are summed without the paper's 1/(#sizes + 1) normalisation (the caller's job;
//     nothing to do here).
// The hash runs on ids, not raw bytes. a^3 and higher powers already overflow int64, so the wrap is
// part of the definition: on the CPU we compute in uint64_t (signed overflow is undefined behaviour in
// C++) and reinterpret as int64; elsewhere we use LibTorch's int64 ops, which is what the released code
// runs. A plain C `%` would give negative ids for negative h; we take ((h % V) + V) % V.
#pragma once

#include <ATen/Tensor.h>

#include <array>
#include <cstdint>
#include <vector>

namespace tessera::blt {

// The released primes, one per hash function f = 0, 1, ...; the released models use f = 0 only.
inline constexpr std::array<int64_t, 11> kHashPrimes = {1000000007, 5915587277, 1500450271, 3267000013,
                                                        5754853343, 4093082899, 9576890767, 3628273133,
                                                        2860486313, 5463458053, 3367900313};
// `encoder_hash_byte_group_vocab` of the released 1B and 7B models.
inline constexpr int64_t kHashVocab = 500002;

// The released models' hash setup (`encoder_hash_byte_group_size`, `..._nb_functions`, `..._vocab`).
struct NgramHashConfig {
  std::vector<int64_t> ngram_sizes = {3, 4, 5, 6, 7, 8};
  int64_t num_hash_functions = 1;
  int64_t vocab = kHashVocab;

  template <class V>
  void fields(V& v) {
    v.optional("ngram_sizes", ngram_sizes, "n of every hashed n-gram table (released: 3..8)");
    v.optional("num_hash_functions", num_hash_functions, "hash functions, each with its own prime (1..11)");
    v.optional("vocab", vocab, "rows of every hash table; ids are h mod vocab (released: 500002)");
  }

  int64_t num_tables() const { return num_hash_functions * static_cast<int64_t>(ngram_sizes.size()); }
  void validate() const;  // errors name the field and the allowed range
};

// Hash ids of one table: tokens [T] or [B, T] of non-negative integer ids (any device) -> int64 ids in
// [0, vocab) of the same shape; each row is hashed on its own (its own zero padding).
at::Tensor ngram_hash_ids(const at::Tensor& tokens, int64_t n, int64_t hash_function = 0,
                          int64_t vocab = kHashVocab);

// Every table in the released order, hash function major, then n (the order of the released
// `encoder_hash_tok_embedding` list): [num_tables, ...tokens' shape]. With fused_offsets, table k's ids
// are shifted by k·vocab, which indexes one fused table of num_tables·vocab rows (the Hugging Face
// port's layout).
at::Tensor ngram_hash_ids(const at::Tensor& tokens, const NgramHashConfig& config, bool fused_offsets = false);

namespace detail {
// The LibTorch int64-op path that non-CPU tensors take, callable on the CPU so tests can check it
// against the uint64 loop.
at::Tensor ngram_hash_ids_tensor_ops(const at::Tensor& tokens, int64_t n, int64_t hash_function, int64_t vocab);
}  // namespace detail

}  // namespace tessera::blt
