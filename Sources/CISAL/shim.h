// Intel ISA-L (Debian: libisal-dev). Only the headers PMU uses are included.
#ifndef PMU_CISAL_SHIM_H
#define PMU_CISAL_SHIM_H
#include <isa-l/crc.h>
#include <isa-l/erasure_code.h>
#include <isa-l/raid.h>
#endif
