/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The 1 GiB cases of test-regions.cc (payload spill of 1 GiB both ways and
 * with both APIs, a 1 GiB region round trip between processes): same code,
 * own binary, so that their run time does not count against the others.
 */
#define REGIONS_BIG 1
#include "test-regions.cc"
