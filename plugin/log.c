/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Log hook (see log.h). */

#include <stdarg.h>
#include <stdio.h>

#include "ipcmux/ipcmux.h"
#include "log.h"
#include "macro.h"

static struct {
        ipcmux_log_handler_t handler;
        void *userdata;
} log_hook;

int log_enabled(void) {
        return __atomic_load_n(&log_hook.handler, __ATOMIC_RELAXED) != NULL;
}

void log_internal(int level, const char *fmt, ...) {
        ipcmux_log_handler_t handler = __atomic_load_n(&log_hook.handler, __ATOMIC_ACQUIRE);
        char buf[512];
        va_list ap;

        if (!handler)
                return;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        handler(level, buf, __atomic_load_n(&log_hook.userdata, __ATOMIC_RELAXED));
}

_public_ void ipcmux_set_log_handler(ipcmux_log_handler_t handler, void *userdata) {
        __atomic_store_n(&log_hook.userdata, userdata, __ATOMIC_RELAXED);
        __atomic_store_n(&log_hook.handler, handler, __ATOMIC_RELEASE);
}
