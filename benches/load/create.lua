-- Create a subject with six fields.
package.path = os.getenv("PIIVAULT_BENCH_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local n = 0
function init(args) c.setup("PIIVAULT_BENCH_DSR_TOKEN", "dsr"); n = math.random(1000000) end
function request()
  n = n + 1
  local body = string.format('{"fields":{"name":"压测用户","id_number":"%s","phone":"139%08d",' ..
    '"email":"load%d@example.com","address":"上海市浦东新区世纪大道100号","bank_card":"6222021234567894"}}',
    c.id_number(n), n % 100000000, n)
  return wrk.format("POST", "/v1/subjects", nil, body)
end
