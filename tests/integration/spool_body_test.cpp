// The stored-upload body (net/spool_body): memory until the spill size, then an unnamed file,
// read back at any offset; no sockets (in this directory only because it links the net library).
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "net/spool_body.hpp"
#include "support.hpp"

using tollgate::spool_body;

namespace {

std::string read_all(const spool_body::value_type& b, std::size_t piece) {
  std::string out;
  std::string buf(piece, '\0');
  for (std::uint64_t at = 0;;) {
    const long n = b.read_at(at, buf.data(), buf.size());
    REQUIRE(n >= 0);
    if (n == 0) break;
    out.append(buf.data(), static_cast<std::size_t>(n));
    at += static_cast<std::uint64_t>(n);
  }
  return out;
}

}  // namespace

TEST_CASE("spool_body: a body within the spill size stays in memory, needing no directory", "[uploads]") {
  spool_body::value_type b;
  b.start("/nonexistent/tollgate-spool", 10, 10);
  REQUIRE(b.active());
  CHECK(b.append("hello", 5));
  CHECK(b.append("world", 5));
  CHECK(b.size() == 10);
  CHECK(b.write_error() == 0);
  CHECK(read_all(b, 3) == "helloworld");
  // One byte more needs the file, which cannot be created there.
  CHECK_FALSE(b.append("!", 1));
  CHECK(b.write_error() == ENOENT);
  SECTION("with room in memory beyond the spill size, the body stays there, up to that cap") {
    spool_body::value_type m;
    m.start("/nonexistent/tollgate-spool", 4, 12);
    CHECK(m.append("hello", 5));  // past the spill size: no file, memory instead
    CHECK(m.append("world", 5));
    CHECK(m.append("!!", 2));
    CHECK(m.write_error() == 0);
    CHECK(read_all(m, 5) == "helloworld!!");
    CHECK_FALSE(m.append("?", 1));  // past the cap
    CHECK(m.write_error() == ENOENT);
  }
}

TEST_CASE("spool_body: past the spill size the body moves to an unnamed file, whole and in order", "[uploads]") {
  tt::temp_dir dir;
  std::string expect;
  spool_body::value_type b;
  b.start(dir.path, 1000, 1000);
  for (int i = 0; i < 300; ++i) {
    const std::string piece = std::to_string(i) + ",";
    REQUIRE(b.append(piece.data(), piece.size()));
    expect += piece;
  }
  CHECK(b.size() == expect.size());
  CHECK(read_all(b, 7) == expect);
  CHECK(read_all(b, 1 << 16) == expect);
  CHECK(tt::directory_entries(dir.path) == 0);  // unnamed: nothing to clean up, nothing left by a crash
  // Moved, it is the same body; the moved-from one holds nothing.
  spool_body::value_type moved = std::move(b);
  CHECK_FALSE(b.active());
  CHECK(moved.size() == expect.size());
  CHECK(read_all(moved, 4096) == expect);
}

TEST_CASE("spool_body: open() creates the file at once, or says why not", "[uploads]") {
  tt::temp_dir dir;
  spool_body::value_type b;
  std::string why;
  REQUIRE(b.open(dir.path, why));
  CHECK(b.append("abc", 3));
  CHECK(read_all(b, 2) == "abc");
  spool_body::value_type bad;
  CHECK_FALSE(bad.open("/nonexistent/tollgate-spool", why));
  CHECK(why.find("/nonexistent/tollgate-spool") != std::string::npos);
  CHECK_FALSE(bad.active());
}
