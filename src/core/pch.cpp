// Translation unit that owns the shared precompiled header (include/kldq/core/pch.hpp).
#include "kldq/core/pch.hpp"
