import XCTest
@testable import Monitor

final class JSONTests: XCTestCase {
    func testParsesAndSerialisesLikeQEMU() throws {
        let value = try JSONParser.parse(#"{"execute": "x", "id": [1, -2.50e3, true, null, "a\"\\/\u00e9\ud83d\ude00"]}"#)
        XCTAssertEqual(value.serialized, #"{"execute": "x", "id": [1, -2.50e3, true, null, "a\"\\/\u00E9\uD83D\uDE00"]}"#)
        XCTAssertEqual(try JSONParser.parse("'single'"), .string("single"), "QEMU accepts single quotes")
        XCTAssertEqual(try JSONParser.parse(" {} "), .object(JSONObject()))
        XCTAssertEqual(try JSONParser.parse("18446744073709551616").int64Value, nil, "too big for Int64, kept as text")
        XCTAssertEqual(try JSONParser.parse("18446744073709551616").serialized, "18446744073709551616")
    }

    func testRejectsWhatQEMURejects() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "{\"a\":1,\"a\":2}", "01", "1.", "-", "tru", "\"\\u0000\"", "\"\\x\"",
                    "\"\u{01}\"", "[1] 2", "{1: 2}", "\"\\ud800\"", "nul"] {
            XCTAssertThrowsError(try JSONParser.parse(bad), bad)
        }
        XCTAssertThrowsError(try JSONParser.parse(Array(repeating: UInt8(ascii: "["), count: 2000)))
        XCTAssertThrowsError(try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]), "invalid UTF-8")
    }

    func testNestingLimitIsQEMUs() throws {
        let ok = String(repeating: "[", count: 1024) + String(repeating: "]", count: 1024)
        XCTAssertNoThrow(try JSONParser.parse(ok))
        let deep = String(repeating: "[", count: 1025) + String(repeating: "]", count: 1025)
        XCTAssertEqual((try? JSONParser.parse(deep)) == nil, true)
    }

    func testSplitterFramesByBalanceNotByLines() {
        var splitter = QMPMessageSplitter()
        XCTAssertEqual(splitter.feed(Array("{".utf8)), [])
        XCTAssertEqual(splitter.feed(Array("\n\"execute\":\"cont\"}\r\n{\"a\":[1,".utf8)),
                       [.message(Array("{ \"execute\":\"cont\"}".utf8))])
        XCTAssertEqual(splitter.feed(Array("2]}".utf8)), [.message(Array("{\"a\":[1,2]}".utf8))])
        XCTAssertEqual(splitter.feed(Array("\"}{\" 12 ".utf8)), [.message(Array("\"}{\"".utf8)), .message(Array("12".utf8))])
    }

    func testSplitterRecoversAfterErrorsAndBoundsMemory() {
        var splitter = QMPMessageSplitter(maxMessageBytes: 100)
        var out = splitter.feed([0xFF] + Array("junk junk\n{}".utf8))
        XCTAssertEqual(out.count, 2)
        XCTAssertEqual(out.last, .message(Array("{}".utf8)))
        out = splitter.feed(Array(("[\"" + String(repeating: "x", count: 500) + "\"]{}").utf8))
        XCTAssertEqual(out, [.error("JSON parse error, token size limit exceeded"), .message(Array("{}".utf8))])
        splitter = QMPMessageSplitter()
        out = splitter.feed(Array((String(repeating: "{\"a\":", count: 2000) + "1" + String(repeating: "}", count: 2000) + "[]").utf8))
        XCTAssertEqual(out, [.error("JSON parse error, nesting depth limit exceeded"), .message(Array("[]".utf8))])
        XCTAssertFalse(splitter.hasPartialMessage)
    }

    struct Sample: Decodable {
        let name: String
        let count: Int?
        let flags: [Bool]
    }

    func testArgumentDecoderSpeaksQEMUsErrors() throws {
        let good = try JSONParser.parse(#"{"name": "n", "flags": [true]}"#)
        XCTAssertEqual(try QMPArgumentDecoder.decode(Sample.self, from: good).name, "n")
        func error(_ text: String) -> String {
            guard let value = try? JSONParser.parse(text) else { return "bad test JSON" }
            do throws(QMPArgumentError) {
                _ = try QMPArgumentDecoder.decode(Sample.self, from: value)
                return "no error"
            } catch {
                return error.description
            }
        }
        XCTAssertEqual(error(#"{"flags": []}"#), "Parameter 'name' is missing")
        XCTAssertEqual(error(#"{"name": 1, "flags": []}"#), "Invalid parameter type for 'name', expected: string")
        XCTAssertEqual(error(#"{"name": "n", "flags": [true, 3]}"#), "Invalid parameter type for 'flags[1]', expected: boolean")
        XCTAssertEqual(error(#"{"name": "n", "count": 1.5, "flags": []}"#), "Invalid parameter type for 'count', expected: integer")
        XCTAssertEqual(error(#"{"name": "n", "count": 99999999999999999999, "flags": []}"#), "Parameter 'count' expects int64")
    }
}
