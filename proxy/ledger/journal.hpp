// The ledger's spill journal: rows the database could not take, appended to a file and replayed
// into the database once it recovers. Used by the ledger's writer thread only (not thread-safe).
//
// File layout (little-endian): a 24-byte header, "TGJOURN1" then the journal id (16 hex digits,
// new for every file, so a replay mark in the database never applies to a later file), then one
// record per row: magic "TGJR", body length (u32), CRC-32 of the body (u32), body = sequence
// number (u64, 1, 2, ... within the file) + the encoded usage_record. A record cut short by a
// crash or damaged on disk fails its length or checksum: it is skipped, the next record is found
// again by its magic, and a bad tail is cut off when the file is opened.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/usage_record.hpp"

namespace tollgate {

struct journal_entry {
  std::uint64_t seq = 0;
  usage_record row;
};

// What open() found in an existing file.
struct journal_open_result {
  std::string error;              // non-empty: the file is unusable (not a journal, unreadable)
  std::uint64_t records = 0;      // valid records
  std::uint64_t cut_bytes = 0;    // torn or damaged tail removed from the file
  std::uint64_t skipped_bytes = 0;  // damaged bytes between valid records (left in place)
};

// One row in the journal's record format (magic, length, CRC, body), on its own: how a Realtime
// session's row so far is kept while the session runs (key_store.hpp, open_sessions). decode
// gives nothing for bytes that are not one whole, intact record.
std::string encode_usage_record(const usage_record& r);
std::optional<usage_record> decode_usage_record(std::string_view bytes);

class ledger_journal {
 public:
  // max_bytes caps the file size (0: no journal, every append is refused). sync: fdatasync after
  // each append (and fsync the directory when the file is created), for power-loss safety.
  ledger_journal(std::string path, std::uint64_t max_bytes, bool sync);
  ~ledger_journal();
  ledger_journal(const ledger_journal&) = delete;
  ledger_journal& operator=(const ledger_journal&) = delete;

  // Reads an existing journal: counts its records, cuts a torn tail. No file: an empty journal.
  // A file that is not a journal, or cannot be read, is left alone and every append refused.
  journal_open_result open();
  // Appends the longest prefix of rows that fits under max_bytes, creating the file on the
  // first append; returns how many rows were written. On an I/O error nothing is appended
  // (the file is cut back), err says why and 0 is returned; when the journal is full, err stays
  // empty.
  std::size_t append(std::span<const usage_record* const> rows, std::string& err);
  // Reads up to n unreplayed records, oldest first, into out (cleared first). Returns the error
  // on failure.
  std::optional<std::string> read(std::size_t n, std::vector<journal_entry>& out);
  // The records returned by the last read() are in the database: move past them.
  void consume();
  // Moves past the records with seq <= last (replayed before a crash; see the database's mark).
  std::optional<std::string> skip_through(std::uint64_t last);
  // Deletes the file once every record is replayed; the next append starts a new file and id.
  // On failure (e.g. a read-only directory) the file stays and appends continue after it.
  std::optional<std::string> remove();
  // fdatasync (when sync) and close; open() may be called again.
  void close() noexcept;

  std::uint64_t pending() const noexcept { return pending_; }  // records not yet replayed
  std::uint64_t bytes() const noexcept { return size_; }       // file size, 0 without a file
  std::uint64_t max_bytes() const noexcept { return max_bytes_; }
  const std::string& id() const noexcept { return id_; }       // "" without a file
  const std::string& path() const noexcept { return path_; }

 private:
  struct scan_result {
    std::uint64_t end = 0;      // offset after the last valid record seen
    std::uint64_t skipped = 0;  // damaged bytes jumped over
    std::string error;
  };
  // Reads records from offset `from` to the end of the file (or until visit returns false),
  // calling visit(entry, start, end) for each valid one.
  template <class Visit>
  scan_result scan(std::uint64_t from, Visit&& visit);
  void reset() noexcept;

  std::string path_;
  std::uint64_t max_bytes_;
  bool sync_;
  int fd_ = -1;
  bool unusable_ = false;        // the file at path_ is not ours: never write to it
  std::string id_;
  std::uint64_t size_ = 0;       // bytes of valid data (the file is cut to this)
  std::uint64_t cursor_ = 0;     // offset of the first unreplayed record
  std::uint64_t pending_ = 0;
  std::uint64_t next_seq_ = 1;
  std::uint64_t read_end_ = 0;   // offset after the records of the last read()
  std::uint64_t read_count_ = 0;
};

}  // namespace tollgate
