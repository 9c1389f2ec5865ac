#include "rt.h"
GUEST("smoke");
void guest_main(void)
{
    info("hello %d %x %s %08x", -5, 0xbeef, "str", 0x12);
    CHECK_EQ("one", 1, 1);
}
