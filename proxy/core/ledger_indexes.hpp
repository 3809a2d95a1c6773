// The ledger's optional indexes (config key ledger.indexes): one per /admin/calls filter, each on
// (column, start_ms), so a filter few rows match reads only its own rows, newest first, instead
// of every row of the range. Off by default: each costs the writer a B-tree insert per row (README,
// ledger.indexes). Names here, so the config reader (core) and the ledger (which creates and drops
// them, and whose page walk picks its query by what exists) agree.
#pragma once

#include <string_view>

namespace tollgate {

struct ledger_index {
  std::string_view filter;  // the /admin/calls filter, and the name ledger.indexes takes
  std::string_view name;    // the SQLite index
  std::string_view column;  // indexed with start_ms after it
};

// `model` matches the requested, served or pricing model: three indexes, which the page walk
// reads as a merge of three ordered walks.
inline constexpr ledger_index kLedgerIndexes[] = {
    {"request_id", "calls_by_request_id", "request_id"},
    {"upstream_request_id", "calls_by_upstream_request_id", "upstream_request_id"},
    {"key", "calls_by_client_key_id", "client_key_id"},
    {"team", "calls_by_team", "team"},
    {"model", "calls_by_requested_model", "requested_model"},
    {"model", "calls_by_served_model", "served_model"},
    {"model", "calls_by_price_model", "price_model"},
    {"provider", "calls_by_provider", "provider"},
    {"route", "calls_by_route", "route"},
    {"user", "calls_by_user", "\"user\""},
};

}  // namespace tollgate
