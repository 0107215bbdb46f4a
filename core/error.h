// Errors a user can act on. Every failure that bad input can cause is a tessera::Error whose
// message names the problem and, where there is one, the fix.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tessera {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// str("a", 1, 'b') == "a1b": builds messages without iostream boilerplate at call sites.
template <class... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

template <class... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(str(std::forward<Args>(args)...));
}

// check(cond, parts...): a precondition on user input (not an internal invariant).
template <class... Args>
void check(bool condition, Args&&... args) {
  if (!condition) fail(std::forward<Args>(args)...);
}

}  // namespace tessera
