// Incremental SSE framing: splits upstream bytes into events with their exact raw bytes.
// Called by the relay for every streamed chunk, so it scans with memchr and never allocates per line.
#include "core/sse_parser.hpp"

#include <cstring>

namespace tollgate {

namespace {

constexpr std::string_view utf8_bom = "\xEF\xBB\xBF";
constexpr std::size_t npos = std::string_view::npos;

// First CR or LF in [from, to), or npos. Streams are almost always LF-only, so look for LF
// first and then for a CR only in front of it: two vectorised scans instead of a byte loop, and
// one when the buffer holds no CR at all (`cr`: sse_parser::cr_).
std::size_t find_eol(const char* base, std::size_t from, std::size_t to, bool cr) noexcept {
  const char* s = base + from;
  const std::size_t len = to - from;
  const auto* lf = static_cast<const char*>(std::memchr(s, '\n', len));
  if (!cr) return lf ? static_cast<std::size_t>(lf - base) : npos;
  const std::size_t before_lf = lf ? static_cast<std::size_t>(lf - s) : len;
  if (const auto* cr_at = static_cast<const char*>(std::memchr(s, '\r', before_lf))) {
    return static_cast<std::size_t>(cr_at - base);
  }
  return lf ? static_cast<std::size_t>(lf - base) : npos;
}

}  // namespace

void sse_parser::append(std::string_view bytes) {
  // Compact here and only here: views from next() point into buf_ and must survive until
  // the caller is done with the event, i.e. until its next append()/next().
  if (pos_ > 0) {
    buf_.erase(0, pos_);
    lines_ -= pos_;
    line_ -= pos_;
    scan_ -= pos_;
    for (std::size_t k = 0; k < n_ends_; ++k) ends_[k].eol -= pos_, ends_[k].next -= pos_;
    pos_ = 0;
    if (cr_) cr_ = std::memchr(buf_.data(), '\r', buf_.size()) != nullptr;
  }
  // One scan of the new bytes spares every line its own scan for a CR (find_eol).
  if (!cr_ && !bytes.empty()) cr_ = std::memchr(bytes.data(), '\r', bytes.size()) != nullptr;
  buf_.append(bytes);
}

bool sse_parser::next(sse_event& out) { return extract(out, false); }

bool sse_parser::finish(sse_event& out) { return extract(out, true); }

std::string_view sse_parser::pending() const noexcept {
  return std::string_view(buf_).substr(pos_);
}

void sse_parser::reset() {
  buf_.clear();
  data_.clear();
  pos_ = lines_ = line_ = scan_ = 0;
  bom_pending_ = true;
  cr_ = false;
  n_ends_ = 0;
}

bool sse_parser::extract(sse_event& out, bool at_eof) {
  if (bom_pending_) {
    // The spec drops one leading BOM; it stays in raw so forwarding remains byte-exact.
    const std::string_view head = pending().substr(0, utf8_bom.size());
    if (!at_eof && head.size() < utf8_bom.size() && utf8_bom.starts_with(head)) return false;
    bom_pending_ = false;
    if (head == utf8_bom) lines_ = line_ = scan_ = pos_ + utf8_bom.size();
  }
  std::size_t end = find_event_end(at_eof);
  if (end == npos) {
    // At end of stream the unterminated tail is an event of its own.
    if (!at_eof || pos_ == buf_.size()) return false;
    end = buf_.size();
  }
  parse_event(end, out);
  pos_ = lines_ = line_ = scan_ = end;
  n_ends_ = 0;
  return true;
}

// End (one past the blank line) of the event starting at pos_, or npos while incomplete.
std::size_t sse_parser::find_event_end(bool at_eof) noexcept {
  const char* b = buf_.data();
  const std::size_t n = buf_.size();
  for (;;) {
    const std::size_t eol = find_eol(b, scan_, n, cr_);
    if (eol == npos) {
      scan_ = n;
      return npos;
    }
    std::size_t next_line = eol + 1;
    if (b[eol] == '\r') {
      if (next_line == n && !at_eof) {
        // A blank line's CR ends the event whatever follows: it is complete now (a first event
        // must not wait for the upstream's next write, which may come seconds later). An LF
        // that follows (CRLF) is then a blank line of its own: an empty event, relayed as is.
        if (eol == line_) {
          note_line_end(eol, next_line);
          line_ = scan_ = next_line;
          return next_line;
        }
        scan_ = eol;  // CR or CRLF? Decided by the next byte.
        return npos;
      }
      if (next_line < n && b[next_line] == '\n') ++next_line;
    }
    const bool blank = eol == line_;
    note_line_end(eol, next_line);
    line_ = scan_ = next_line;
    if (blank) return next_line;
  }
}

// Fills `out` from the event in [pos_, end); its lines begin at lines_.
void sse_parser::parse_event(std::size_t end, sse_event& out) {
  const std::string_view buf(buf_);
  out.raw = buf.substr(pos_, end - pos_);
  out.event = {};
  out.data = {};
  out.has_data = false;
  std::size_t data_lines = 0;

  std::size_t k = 0;  // lines whose ends find_event_end noted
  for (std::size_t p = lines_; p < end;) {
    std::size_t eol, next_line;
    if (k < n_ends_) {
      eol = ends_[k].eol;
      next_line = ends_[k++].next;
    } else if (eol = find_eol(buf_.data(), p, end, cr_); eol == npos) {  // last line of an unterminated tail (finish())
      eol = next_line = end;
    } else {
      next_line = eol + (buf[eol] == '\r' && eol + 1 < end && buf[eol + 1] == '\n' ? 2 : 1);
    }
    const std::string_view line = buf.substr(p, eol - p);
    p = next_line;
    if (line.empty()) break;         // the terminating blank line
    if (line.front() == ':') continue;  // comment: raw only

    std::string_view name = line;
    std::string_view value;
    if (const std::size_t colon = line.find(':'); colon != npos) {
      name = line.substr(0, colon);
      value = line.substr(colon + 1);
      if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    }
    if (name == "data") {
      // One data line (the usual case) is a view into buf_; only several are joined in data_.
      if (data_lines == 0) {
        out.data = value;
      } else {
        if (data_lines == 1) data_.assign(out.data);
        data_ += '\n';
        data_ += value;
        out.data = data_;
      }
      ++data_lines;
      out.has_data = true;
    } else if (name == "event") {
      out.event = value;
    }
    // id, retry and unknown fields do not matter to a relay: ignored, as the spec says.
  }
}

}  // namespace tollgate
