/* idle: print a line, then halt with interrupts off (for resident memory). */
#include "rt.h"
GUEST("idle");

void guest_main(void)
{
    info("ready");
    for (;;) { cli(); hlt(); }
}
