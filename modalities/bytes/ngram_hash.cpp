#include "modalities/bytes/ngram_hash.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "core/error.h"

namespace tessera::blt {

namespace {

// a^j modulo 2^64: the bits torch's int64 `prime ** j` produces (it wraps the same way).
std::vector<uint64_t> prime_powers(int64_t hash_function, int64_t n) {
  const auto a = static_cast<uint64_t>(kHashPrimes[static_cast<size_t>(hash_function)]);
  std::vector<uint64_t> out(static_cast<size_t>(n));
  uint64_t p = 1;
  for (auto& v : out) {
    v = p;
    p *= a;  // unsigned: wraps modulo 2^64, well defined
  }
  return out;
}

// uint64 -> int64 keeping the bits (modular since C++20, and in GCC/Clang always).
int64_t as_signed(uint64_t v) { return static_cast<int64_t>(v); }

// Floor remainder: in [0, vocab) also for negative h (torch.remainder; C's % would keep the sign).
int64_t floor_mod(int64_t h, int64_t vocab) {
  const int64_t r = h % vocab;
  return r < 0 ? r + vocab : r;
}

// Checks the arguments; returns the ids as a contiguous int64 [B, T] view on the tokens' device.
at::Tensor checked_rows(const at::Tensor& tokens, int64_t n, int64_t hash_function, int64_t vocab) {
  check(tokens.defined(), "ngram_hash_ids: tokens are missing");
  check(tokens.dim() == 1 || tokens.dim() == 2, "ngram_hash_ids: tokens must be [T] or [B, T], got ", tokens.dim(),
        " dimensions ", tokens.sizes());
  check(at::isIntegralType(tokens.scalar_type(), /*includeBool=*/false),
        "ngram_hash_ids: tokens must be integer ids, got ", tokens.scalar_type());
  check(n >= 1, "ngram_hash_ids: n-gram size must be >= 1, got ", n);
  check(hash_function >= 0 && hash_function < static_cast<int64_t>(kHashPrimes.size()),
        "ngram_hash_ids: hash function ", hash_function, " does not exist (the released code has primes for 0..",
        kHashPrimes.size() - 1, ")");
  check(vocab >= 1, "ngram_hash_ids: vocab must be >= 1, got ", vocab);
  const at::Tensor x = (tokens.dim() == 1 ? tokens.unsqueeze(0) : tokens).to(at::kLong).contiguous();
  if (x.numel() > 0) {
    const int64_t least = x.min().item<int64_t>();
    check(least >= 0, "ngram_hash_ids: ids must be >= 0, found ", least,
          " (drop padding such as PAD = -1 before hashing; BLT ids are 0..259)");
  }
  return x;
}

at::Tensor hash_cpu(const at::Tensor& x, int64_t n, int64_t hash_function, int64_t vocab) {
  const int64_t rows = x.size(0), len = x.size(1);
  const std::vector<uint64_t> powers = prime_powers(hash_function, n);
  at::Tensor out = at::empty({rows, len}, x.options());
  const int64_t* xp = x.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, rows * len, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b = k / len, i = k % len;
      const int64_t* row = xp + b * len;
      uint64_t h = 0;
      // Window w[j] = x[i − n + 1 + j] gets a^j: the oldest id a^0, the current one a^{n−1}; ids before
      // the row start are the zero padding and add nothing.
      for (int64_t j = 0; j < n; ++j) {
        const int64_t pos = i - n + 1 + j;
        if (pos >= 0) h += static_cast<uint64_t>(row[pos]) * powers[static_cast<size_t>(j)];
      }
      op[k] = floor_mod(as_signed(h), vocab);
    }
  });
  return out;
}

}  // namespace

void NgramHashConfig::validate() const {
  check(!ngram_sizes.empty(), "ngram hash: ngram_sizes is empty (the released models use [3, 4, 5, 6, 7, 8])");
  for (const int64_t n : ngram_sizes) check(n >= 1, "ngram hash: every n-gram size must be >= 1, got ", n);
  check(num_hash_functions >= 1 && num_hash_functions <= static_cast<int64_t>(kHashPrimes.size()),
        "ngram hash: num_hash_functions must be 1..", kHashPrimes.size(), " (one released prime each), got ",
        num_hash_functions);
  check(vocab >= 1, "ngram hash: vocab must be >= 1, got ", vocab);
}

namespace detail {

at::Tensor ngram_hash_ids_tensor_ops(const at::Tensor& tokens, int64_t n, int64_t hash_function, int64_t vocab) {
  const at::Tensor x = checked_rows(tokens, n, hash_function, vocab);
  if (x.size(1) == 0) return at::empty_like(tokens, tokens.options().dtype(at::kLong));
  // Released: left-pad n−1 zeros, unfold into windows [B, T, n], multiply by a^j, sum, remainder.
  const std::vector<uint64_t> p = prime_powers(hash_function, n);
  std::vector<int64_t> signed_powers;
  for (const uint64_t v : p) signed_powers.push_back(as_signed(v));
  const at::Tensor powers = at::tensor(signed_powers, at::kLong).to(x.device());
  const at::Tensor windows = at::constant_pad_nd(x, {n - 1, 0}, 0).unfold(1, n, 1);
  const at::Tensor ids = at::remainder((windows * powers).sum(-1), vocab);
  return tokens.dim() == 1 ? ids.squeeze(0) : ids;
}

}  // namespace detail

at::Tensor ngram_hash_ids(const at::Tensor& tokens, int64_t n, int64_t hash_function, int64_t vocab) {
  if (tokens.defined() && !tokens.is_cpu()) return detail::ngram_hash_ids_tensor_ops(tokens, n, hash_function, vocab);
  const at::Tensor ids = hash_cpu(checked_rows(tokens, n, hash_function, vocab), n, hash_function, vocab);
  return tokens.dim() == 1 ? ids.squeeze(0) : ids;
}

at::Tensor ngram_hash_ids(const at::Tensor& tokens, const NgramHashConfig& config, bool fused_offsets) {
  config.validate();
  std::vector<at::Tensor> tables;
  for (int64_t f = 0; f < config.num_hash_functions; ++f) {
    for (const int64_t n : config.ngram_sizes) {
      at::Tensor ids = ngram_hash_ids(tokens, n, f, config.vocab);
      if (fused_offsets) ids = ids + static_cast<int64_t>(tables.size()) * config.vocab;
      tables.push_back(std::move(ids));
    }
  }
  return at::stack(tables);
}

}  // namespace tessera::blt
