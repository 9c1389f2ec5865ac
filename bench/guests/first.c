/* first: built with -DFIRST_BYTE: the reset stub writes that byte to COM1
 * before anything else; the C part only exits. (start-up time benchmark) */
#include "rt.h"
GUEST("first");

void guest_main(void) { }
