// Catch2 main for 2.x (3.x links Catch2WithMain instead).
#if KLDQ_CATCH_MAJOR < 3
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif
