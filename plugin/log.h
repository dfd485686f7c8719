/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The library never prints: everything it would say goes to the handler set
 * with ipcmux_set_log_handler(), or nowhere.  Formatting only happens when a
 * handler is installed, so debug logging costs a load and a branch.
 */

#include <syslog.h>

void log_internal(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int log_enabled(void);

#define log_full(level, ...)                            \
        do {                                            \
                if (log_enabled())                      \
                        log_internal(level, __VA_ARGS__); \
        } while (0)
#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)
