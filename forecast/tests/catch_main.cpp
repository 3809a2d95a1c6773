// The Catch2 v2 main of the forecast tests, compiled once.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
