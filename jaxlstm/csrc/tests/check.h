// A minimal harness for the kernel's C++ unit tests: CHECK(condition) << context, and a
// main that runs every TEST and exits non-zero when any check failed.
#ifndef JAXLSTM_CSRC_TESTS_CHECK_H_
#define JAXLSTM_CSRC_TESTS_CHECK_H_

#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace check {

struct Test {
  const char* name;
  std::function<void()> body;
};

inline std::vector<Test>& Registry() {
  static std::vector<Test> tests;
  return tests;
}

inline int& Failures() {
  static int failures = 0;
  return failures;
}

// Collects a failed check's message and prints it when the statement ends.
class Failure {
 public:
  Failure(const char* file, int line, const char* condition) {
    message_ << file << ":" << line << ": CHECK(" << condition << ") failed ";
  }
  ~Failure() {
    std::fprintf(stderr, "%s\n", message_.str().c_str());
    ++Failures();
  }
  template <typename T>
  Failure& operator<<(const T& value) {
    message_ << value;
    return *this;
  }

 private:
  std::ostringstream message_;
};

struct Register {
  Register(const char* name, std::function<void()> body) { Registry().push_back({name, body}); }
};

}  // namespace check

#define CHECK(condition) \
  if (condition) {       \
  } else                 \
    check::Failure(__FILE__, __LINE__, #condition)

#define TEST(name)                                      \
  void name();                                          \
  static check::Register register_##name(#name, &name); \
  void name()

// The test program's main: runs every TEST, says which ran, and how many checks failed.
#define CHECK_MAIN(suite)                                                                          \
  int main() {                                                                                     \
    for (const check::Test& test : check::Registry()) {                                            \
      const int before = check::Failures();                                                        \
      test.body();                                                                                 \
      std::printf("%s %s: %s\n", suite, test.name, check::Failures() == before ? "ok" : "FAILED"); \
    }                                                                                              \
    std::printf("%s: %zu tests, %d failed checks\n", suite, check::Registry().size(),              \
                check::Failures());                                                                \
    return check::Failures() == 0 ? 0 : 1;                                                         \
  }

#endif  // JAXLSTM_CSRC_TESTS_CHECK_H_
