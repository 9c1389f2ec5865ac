#!/bin/sh
# Prints one closing line from swift test's output: passed, failed and skipped test cases.
log=$1
passed=$(grep -cE "^Test Case .* passed" "$log")
failed=$(grep -cE "^Test Case .* failed" "$log")
skipped=$(grep -cE "^Test Case .* skipped" "$log")
echo "tests: $passed passed, $failed failed, $skipped skipped"
if [ "$skipped" -gt 0 ]; then
    echo "*** $skipped test(s) SKIPPED — see the SKIPPED lines above for why ***"
fi
