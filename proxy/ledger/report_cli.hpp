// `tollgate report`: the finance API's spend and what-if figures, printed offline from a ledger
// file as an aligned table, CSV or JSON. main.cpp hands it the arguments after "report".
#pragma once
#include <ostream>
#include <string>
#include <vector>

namespace tollgate {

// argv holds the arguments after "tollgate report" (argv[0] is the first option). Prints to
// stdout/stderr. Exit status: 0 done, 2 bad arguments or a missing/unreadable input file, 1 a
// database error while reading.
int report_main(int argc, char** argv);
// The same, with the arguments and streams given (tests).
int report_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace tollgate
