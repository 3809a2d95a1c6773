#include "net/spool_body.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <new>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace tollgate {

bool spool_body::value_type::open(const std::string& dir, std::string& why) {
  close();
  const int fd = create_file(dir, why);
  if (fd < 0) return false;
  fd_ = fd;
  active_ = true;
  return true;
}

void spool_body::value_type::start(std::string dir, std::uint64_t spill_at, std::uint64_t memory_cap) {
  close();
  dir_ = std::move(dir);
  spill_at_ = spill_at;
  memory_cap_ = std::max(memory_cap, spill_at);
  active_ = true;
}

int spool_body::value_type::create_file(const std::string& dir, std::string& why) {
  // The default is disk: /var/tmp, not /tmp, which is RAM (tmpfs) on many systems.
  const char* tmp = dir.empty() ? std::getenv("TMPDIR") : nullptr;
  const std::string d = !dir.empty() ? dir : tmp && *tmp ? std::string(tmp) : std::string("/var/tmp");
  int fd = ::open(d.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    // A file system without O_TMPFILE (or an old kernel): a named file, unlinked at once.
    std::vector<char> name(d.begin(), d.end());
    static constexpr char suffix[] = "/tollgate-upload-XXXXXX";
    name.insert(name.end(), suffix, suffix + sizeof suffix);  // with the terminating NUL
    fd = ::mkostemp(name.data(), O_CLOEXEC);
    if (fd >= 0) ::unlink(name.data());
  }
  if (fd < 0) {
    const int e = errno;
    why = "cannot create a temporary file in '" + d + "': " + std::strerror(e);
    errno = e;
  }
  return fd;
}

void spool_body::value_type::close() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  size_ = 0;
  error_ = 0;
  active_ = false;
  spill_at_ = 0;
  memory_cap_ = 0;
  spill_error_ = 0;
  memory_.clear();
}

long spool_body::value_type::read_at(std::uint64_t offset, char* out, std::size_t n) const noexcept {
  if (fd_ < 0) {  // still in memory
    if (offset >= memory_.size()) return 0;
    const std::size_t k = std::min<std::size_t>(n, memory_.size() - static_cast<std::size_t>(offset));
    std::memcpy(out, memory_.data() + offset, k);
    return static_cast<long>(k);
  }
  for (;;) {
    const ssize_t r = ::pread(fd_, out, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    return static_cast<long>(r);
  }
}

bool spool_body::value_type::append(const char* data, std::size_t n) noexcept {
  if (fd_ < 0) {
    int fd = -1;
    if (memory_.size() + n > spill_at_ && spill_error_ == 0) {  // past the spill size: a file
      std::string why;
      fd = create_file(dir_, why);
      if (fd < 0) spill_error_ = errno;
    }
    if (fd < 0) {  // memory: below the spill size, or no file could be made and within the cap
      if (memory_.size() + n > (spill_error_ ? memory_cap_ : spill_at_)) {
        error_ = spill_error_ ? spill_error_ : ENOSPC;
        return false;
      }
      try {
        memory_.append(data, n);
      } catch (const std::bad_alloc&) {
        error_ = ENOMEM;
        return false;
      }
      size_ += n;
      return true;
    }
    // The file, with what was held so far first.
    fd_ = fd;
    std::string held = std::move(memory_);
    memory_ = std::string();
    size_ = 0;
    if (!append(held.data(), held.size())) return false;
  }
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, data, n, static_cast<off_t>(size_));
    if (w < 0) {
      if (errno == EINTR) continue;
      error_ = errno;
      return false;
    }
    if (w == 0) {  // not expected from a regular file; do not spin
      error_ = EIO;
      return false;
    }
    data += w;
    n -= static_cast<std::size_t>(w);
    size_ += static_cast<std::uint64_t>(w);
  }
  return true;
}

}  // namespace tollgate
