// The spill journal of the ledger (journal.hpp): record encoding, append with a size cap,
// scanning with checksum checks and resynchronisation, replay cursor. Called by the writer thread.
#include "ledger/journal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <string_view>
#include <utility>

namespace tollgate {

namespace {

constexpr char kFileMagic[8] = {'T', 'G', 'J', 'O', 'U', 'R', 'N', '1'};
constexpr std::size_t kIdChars = 16;
constexpr std::size_t kHeaderBytes = sizeof kFileMagic + kIdChars;
constexpr std::uint32_t kRecordMagic = 0x524A4754;  // "TGJR" in file order
constexpr std::size_t kRecordHead = 12;             // magic, body length, CRC-32
// A body longer than this is damage, not a row (rows are a few hundred bytes; the longest
// client-supplied strings are bounded by the request limits, well below).
constexpr std::uint32_t kMaxBody = 64u << 20;
constexpr std::size_t kWindow = 256u << 10;

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

void put_u32(std::string& b, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>(v >> (8 * i)));
}
void put_u64(std::string& b, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>(v >> (8 * i)));
}
void put_u8(std::string& b, unsigned v) { b.push_back(static_cast<char>(v)); }
void put_i64(std::string& b, std::int64_t v) { put_u64(b, static_cast<std::uint64_t>(v)); }
void put_f64(std::string& b, double v) { put_u64(b, std::bit_cast<std::uint64_t>(v)); }
void put_str(std::string& b, std::string_view s) {
  put_u32(b, static_cast<std::uint32_t>(s.size()));
  b.append(s);
}

std::uint32_t get_u32(const unsigned char* p) {
  return std::uint32_t(p[0]) | std::uint32_t(p[1]) << 8 | std::uint32_t(p[2]) << 16 |
         std::uint32_t(p[3]) << 24;
}

// Bounds-checked reader of a record body; any overrun sets ok = false.
struct body_reader {
  const unsigned char* p;
  const unsigned char* end;
  bool ok = true;

  bool take(std::size_t n) {
    if (!ok || static_cast<std::size_t>(end - p) < n) return ok = false;
    return true;
  }
  std::uint64_t u64() {
    if (!take(8)) return 0;
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
    p += 8;
    return v;
  }
  std::uint32_t u32() {
    if (!take(4)) return 0;
    const auto v = get_u32(p);
    p += 4;
    return v;
  }
  unsigned u8() { return take(1) ? *p++ : 0; }
  bool flag() {
    const unsigned v = u8();
    if (v > 1) ok = false;
    return v == 1;
  }
  std::int64_t i64() { return static_cast<std::int64_t>(u64()); }
  double f64() { return std::bit_cast<double>(u64()); }
  std::string str() {
    const std::uint32_t n = u32();
    if (!take(n)) return {};
    std::string s(reinterpret_cast<const char*>(p), n);
    p += n;
    return s;
  }
};

// Body: seq, then every usage_record field in declaration order.
void encode_record(std::string& out, std::uint64_t seq, const usage_record& r) {
  const std::size_t head = out.size();
  out.append(kRecordHead, '\0');
  put_u64(out, seq);
  put_str(out, r.request_id);
  put_i64(out, r.start_ms);
  put_u8(out, static_cast<unsigned>(r.route));
  put_str(out, r.method);
  put_str(out, r.requested_model);
  put_str(out, r.served_model);
  put_str(out, r.price_model);
  put_str(out, r.upstream);
  put_str(out, r.client_key_id);
  put_str(out, r.team);
  put_str(out, r.user);
  put_u32(out, static_cast<std::uint32_t>(r.status));
  put_u8(out, r.stream);
  put_u8(out, r.aborted);
  put_i64(out, r.tokens.prompt);
  put_i64(out, r.tokens.completion);
  put_i64(out, r.tokens.cached);
  put_i64(out, r.tokens.cache_write);
  put_i64(out, r.tokens.cache_write_1h);
  put_i64(out, r.tokens.reasoning);
  put_u8(out, static_cast<unsigned>(r.source));
  put_u8(out, r.priced);
  put_f64(out, r.cost_usd);
  put_f64(out, r.latency_ms);
  put_f64(out, r.first_byte_ms);
  put_str(out, r.error_kind);
  put_str(out, r.upstream_request_id);
  put_u32(out, static_cast<std::uint32_t>(r.attempts));
  // Added after the first journal format: a record without them (an older tollgate's) ends here.
  put_i64(out, r.tokens.web_search);
  put_u8(out, static_cast<unsigned>(r.tokens.tier));
  // Added with ledger schema 5; a record of the format before ends before it.
  put_str(out, r.provider);

  const auto* body = reinterpret_cast<const unsigned char*>(out.data() + head + kRecordHead);
  const std::size_t len = out.size() - head - kRecordHead;
  std::string h;
  put_u32(h, kRecordMagic);
  put_u32(h, static_cast<std::uint32_t>(len));
  put_u32(h, static_cast<std::uint32_t>(crc32(0L, body, static_cast<uInt>(len))));
  out.replace(head, kRecordHead, h);
}

bool decode_body(const unsigned char* p, std::size_t len, journal_entry& e) {
  body_reader in{p, p + len};
  usage_record& r = e.row;
  e.seq = in.u64();
  r.request_id = in.str();
  r.start_ms = in.i64();
  const unsigned route = in.u8();
  r.method = in.str();
  r.requested_model = in.str();
  r.served_model = in.str();
  r.price_model = in.str();
  r.upstream = in.str();
  r.client_key_id = in.str();
  r.team = in.str();
  r.user = in.str();
  r.status = static_cast<int>(in.u32());
  r.stream = in.flag();
  r.aborted = in.flag();
  r.tokens.prompt = in.i64();
  r.tokens.completion = in.i64();
  r.tokens.cached = in.i64();
  r.tokens.cache_write = in.i64();
  r.tokens.cache_write_1h = in.i64();
  r.tokens.reasoning = in.i64();
  const unsigned source = in.u8();
  r.priced = in.flag();
  r.cost_usd = in.f64();
  r.latency_ms = in.f64();
  r.first_byte_ms = in.f64();
  r.error_kind = in.str();
  r.upstream_request_id = in.str();
  r.attempts = static_cast<int>(in.u32());
  unsigned tier = 0;
  if (in.ok && in.p != in.end) {  // fields of later formats (see encode_record)
    r.tokens.web_search = in.i64();
    tier = in.u8();
    if (in.ok && in.p != in.end) r.provider = in.str();
  }
  if (!in.ok || in.p != in.end || tier > static_cast<unsigned>(service_tier::off_peak)) return false;
  r.tokens.tier = static_cast<service_tier>(tier);
  if (route > static_cast<unsigned>(route_kind::other) ||
      source > static_cast<unsigned>(usage_source::estimated))
    return false;
  r.route = static_cast<route_kind>(route);
  r.source = static_cast<usage_source>(source);
  return true;
}

// pread() through a sliding window, so a scan reads the file in large pieces.
class window_reader {
 public:
  window_reader(int fd, std::uint64_t size) : fd_(fd), size_(size) {}
  // Bytes [off, off + n), or nullptr past the end of the data or on a read error.
  const unsigned char* at(std::uint64_t off, std::size_t n) {
    if (off + n > size_) return nullptr;
    if (off >= base_ && off + n <= base_ + buf_.size()) return buf_.data() + (off - base_);
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(
        std::max(n, kWindow), size_ - off));
    buf_.resize(want);
    std::size_t got = 0;
    while (got < want) {
      const ssize_t r = ::pread(fd_, buf_.data() + got, want - got, static_cast<off_t>(off + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        error = errno_text("read");
        buf_.clear();
        return nullptr;
      }
      if (r == 0) break;  // the file is shorter than we were told: treat the rest as absent
      got += static_cast<std::size_t>(r);
    }
    buf_.resize(got);
    base_ = off;
    if (got < want) size_ = off + got;
    return got >= n ? buf_.data() : nullptr;
  }
  std::string error;

 private:
  int fd_;
  std::uint64_t size_;
  std::uint64_t base_ = 0;
  std::vector<unsigned char> buf_;
};

bool write_all(int fd, std::string_view data, std::uint64_t off) {
  while (!data.empty()) {
    const ssize_t w = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = EIO;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(w));
    off += static_cast<std::uint64_t>(w);
  }
  return true;
}

// After creating or removing a file, its directory entry is durable only once the directory
// itself is synced.
void sync_parent_dir(const std::string& path) {
  auto dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::string new_journal_id() {
  std::random_device rd;
  const std::uint64_t v = std::uint64_t(rd()) << 32 | rd();
  static constexpr char hex[] = "0123456789abcdef";
  std::string id(kIdChars, '0');
  for (std::size_t i = 0; i < kIdChars; ++i) id[i] = hex[(v >> (4 * (kIdChars - 1 - i))) & 0xF];
  return id;
}

}  // namespace

ledger_journal::ledger_journal(std::string path, std::uint64_t max_bytes, bool sync)
    : path_(std::move(path)), max_bytes_(max_bytes), sync_(sync) {}

ledger_journal::~ledger_journal() { close(); }

void ledger_journal::reset() noexcept {
  id_.clear();
  size_ = cursor_ = pending_ = read_end_ = read_count_ = 0;
  next_seq_ = 1;
}

void ledger_journal::close() noexcept {
  if (fd_ >= 0) {
    if (sync_) ::fdatasync(fd_);
    ::close(fd_);
  }
  fd_ = -1;
  reset();
}

template <class Visit>
ledger_journal::scan_result ledger_journal::scan(std::uint64_t from, Visit&& visit) {
  window_reader in(fd_, size_);
  scan_result res;
  res.end = from;
  journal_entry e;
  std::uint64_t off = from;
  for (;;) {
    const unsigned char* head = in.at(off, kRecordHead);
    if (!head) break;
    const std::uint32_t len = get_u32(head + 4);
    const std::uint32_t crc = get_u32(head + 8);
    bool valid = false;
    if (get_u32(head) == kRecordMagic && len >= 8 && len <= kMaxBody) {
      if (const unsigned char* body = in.at(off + kRecordHead, len))
        valid = crc32(0L, body, len) == crc && decode_body(body, len, e);
    }
    if (!in.error.empty()) break;
    if (!valid) {
      ++off;  // damaged: look for the next record's magic
      continue;
    }
    const std::uint64_t end = off + kRecordHead + len;
    res.skipped += off - res.end;
    res.end = end;
    if (!visit(e, off, end)) break;
    off = end;
  }
  res.error = std::move(in.error);
  return res;
}

journal_open_result ledger_journal::open() {
  close();
  unusable_ = false;
  journal_open_result res;
  const int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    // Unreadable (EACCES, EIO...): reported; appends still try, and O_EXCL keeps them off an
    // existing file.
    if (errno != ENOENT && errno != ENOTDIR)
      res.error = errno_text(("cannot open " + path_).c_str());
    return res;
  }
  const auto fail = [&](std::string why) {
    ::close(fd);
    unusable_ = true;
    res.error = path_ + ": " + why;
    return res;
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(errno_text("stat"));
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  char header[kHeaderBytes] = {};
  const ssize_t got = ::pread(fd, header, kHeaderBytes, 0);
  if (got < 0) return fail(errno_text("read"));
  if (file_size < kHeaderBytes) {
    // Cut while its header was written: nothing in it yet.
    if (std::memcmp(header, kFileMagic, std::min<std::size_t>(file_size, sizeof kFileMagic)) != 0)
      return fail("not a tollgate ledger journal; move it away");
    ::unlink(path_.c_str());
    ::close(fd);
    return res;
  }
  if (std::memcmp(header, kFileMagic, sizeof kFileMagic) != 0)
    return fail("not a tollgate ledger journal; move it away");
  std::string id(header + sizeof kFileMagic, kIdChars);
  const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  if (!std::all_of(id.begin(), id.end(), hex))
    return fail("damaged journal header; move it away");

  fd_ = fd;
  id_ = std::move(id);
  size_ = file_size;
  std::uint64_t records = 0, last_seq = 0;
  auto s = scan(kHeaderBytes, [&](const journal_entry& e, std::uint64_t, std::uint64_t) {
    ++records;
    last_seq = e.seq;
    return true;
  });
  // Later appends go right after the last good record, so a damaged tail must go.
  std::string why = s.error;
  if (why.empty() && s.end < file_size && ::ftruncate(fd, static_cast<off_t>(s.end)) != 0)
    why = errno_text("cutting the damaged tail");
  if (!why.empty()) {
    fd_ = -1;
    reset();
    return fail(why);
  }
  size_ = s.end;
  cursor_ = kHeaderBytes;
  pending_ = records;
  next_seq_ = last_seq + 1;
  res.records = records;
  res.cut_bytes = file_size - s.end;
  res.skipped_bytes = s.skipped;
  if (records == 0) remove();
  return res;
}

std::size_t ledger_journal::append(std::span<const usage_record* const> rows, std::string& err) {
  const std::size_t n = rows.size();
  err.clear();
  if (unusable_) {
    err = path_ + " is not a usable journal";
    return 0;
  }
  if (n == 0 || max_bytes_ == 0) return 0;
  const bool create = fd_ < 0;
  const std::uint64_t base = create ? 0 : size_;
  const std::uint64_t first_seq = create ? 1 : next_seq_;
  std::string id = create ? new_journal_id() : id_;
  std::string buf;
  if (create) {
    buf.append(kFileMagic, sizeof kFileMagic);
    buf += id;
  }
  std::size_t k = 0;
  std::string rec;
  for (; k < n; ++k) {
    rec.clear();
    encode_record(rec, first_seq + k, *rows[k]);
    if (base + buf.size() + rec.size() > max_bytes_) break;
    buf += rec;
  }
  if (k == 0) return 0;  // full

  int fd = fd_;
  if (create) {
    fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      err = errno_text(("cannot create " + path_).c_str());
      return 0;
    }
  }
  if (!write_all(fd, buf, base) || (sync_ && ::fdatasync(fd) != 0)) {
    err = errno_text(("cannot write " + path_).c_str());
    if (create) {
      ::close(fd);
      ::unlink(path_.c_str());
    } else if (::ftruncate(fd, static_cast<off_t>(size_)) != 0) {
      // The partial record stays; the next append overwrites it (we write at size_), and a
      // restart cuts it as a torn tail.
    }
    return 0;
  }
  if (create) {
    if (sync_) sync_parent_dir(path_);
    fd_ = fd;
    id_ = std::move(id);
    cursor_ = kHeaderBytes;
    pending_ = 0;
  }
  size_ = base + buf.size();
  pending_ += k;
  next_seq_ = first_seq + k;
  return k;
}

std::optional<std::string> ledger_journal::read(std::size_t n, std::vector<journal_entry>& out) {
  out.clear();
  read_end_ = cursor_;
  read_count_ = 0;
  if (fd_ < 0 || pending_ == 0 || n == 0) return std::nullopt;
  auto s = scan(cursor_, [&](journal_entry& e, std::uint64_t, std::uint64_t end) {
    out.push_back(std::move(e));
    read_end_ = end;
    return out.size() < n;
  });
  if (!s.error.empty()) {
    out.clear();
    return s.error;
  }
  if (out.empty()) {
    // The file lost records we counted (cut by someone else): nothing left to replay.
    const auto lost = std::exchange(pending_, 0);
    return path_ + ": " + std::to_string(lost) + " records expected, none readable";
  }
  read_count_ = out.size();
  return std::nullopt;
}

void ledger_journal::consume() {
  cursor_ = read_end_;
  pending_ -= std::min(pending_, read_count_);
  read_count_ = 0;
}

std::optional<std::string> ledger_journal::skip_through(std::uint64_t last) {
  if (fd_ < 0 || pending_ == 0 || last == 0) return std::nullopt;
  std::uint64_t skipped = 0, at = cursor_;
  auto s = scan(cursor_, [&](const journal_entry& e, std::uint64_t start, std::uint64_t end) {
    if (e.seq > last) {
      at = start;
      return false;
    }
    ++skipped;
    at = end;
    return true;
  });
  if (!s.error.empty()) return s.error;
  cursor_ = at;
  pending_ -= std::min(pending_, skipped);
  return std::nullopt;
}

std::optional<std::string> ledger_journal::remove() {
  if (fd_ < 0) return std::nullopt;
  if (::unlink(path_.c_str()) != 0 && errno != ENOENT)
    return errno_text(("cannot remove " + path_).c_str());
  ::close(fd_);
  fd_ = -1;
  reset();
  return std::nullopt;
}

std::string encode_usage_record(const usage_record& r) {
  std::string out;
  encode_record(out, 0, r);
  return out;
}

std::optional<usage_record> decode_usage_record(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < kRecordHead || get_u32(p) != kRecordMagic) return std::nullopt;
  const std::uint32_t len = get_u32(p + 4);
  if (len != bytes.size() - kRecordHead || crc32(0L, p + kRecordHead, len) != get_u32(p + 8)) return std::nullopt;
  journal_entry e;
  if (!decode_body(p + kRecordHead, len, e)) return std::nullopt;
  return std::move(e.row);
}

}  // namespace tollgate
